"""The gpu-let scheduler: pure planning code (no I/O, no clock, no global state)."""
