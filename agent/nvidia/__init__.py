"""The NVIDIA backend: GPU discovery (NVML), MPS daemons, MIG instances, GPU worker engines and
GPU profiling. Nothing here imports a CUDA library at module level."""
