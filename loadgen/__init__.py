"""Load generation and client-side measurement against a running router."""
