"""The SLO-aware dispatcher: per-gpu-let queues, duty-cycle batching, routing, admission."""
