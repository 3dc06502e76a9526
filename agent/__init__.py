"""gpulet agent: one per host; runs gpulets as partition-limited worker processes."""
