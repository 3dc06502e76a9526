"""Shared by router, agent and tools: catalog, wire formats, settings, Redis state."""
