"""The environment a GPU gpulet's worker starts with (pure): it binds the worker to its GPU or MIG
instance and limits it under MPS. The worker applies it before any CUDA library loads, since
the CUDA driver reads these variables once, when it initialises (cuInit).
"""

from __future__ import annotations

from dataclasses import dataclass

SHARING_MPS = "mps"
SHARING_MIG = "mig"
SHARING_TIME = "time-sliced"
MIB = 2**20


@dataclass(frozen=True)
class GpuSlot:
    """Where gpulets of one agent device run."""

    device_id: str
    visible: str  # CUDA_VISIBLE_DEVICES: "GPU-<uuid>", or "MIG-<uuid>" for a MIG instance
    sharing: str  # SHARING_MPS | SHARING_MIG | SHARING_TIME
    mps_pipe_dir: str | None = None  # with SHARING_MPS: the daemon's pipe directory


def gpulet_env(slot: GpuSlot, size_pct: float, memory_limit_mb: float = 0.0) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES always; under MPS also the pipe directory, the SM share and, when
    `memory_limit_mb` > 0, the pinned device memory limit.

    The worker sees exactly one device, so it is device 0 inside the worker: the memory limit
    names device 0. MPS caps are per client process (peers.md section 6.1), and a gpulet is
    one process, so these are the gpulet's caps.
    """
    env = {"CUDA_VISIBLE_DEVICES": slot.visible}
    if slot.sharing != SHARING_MPS:
        return env
    if slot.mps_pipe_dir is None:
        raise ValueError(f"device {slot.device_id} shares by MPS but has no pipe directory")
    if not 0 < size_pct <= 100:
        raise ValueError(f"an MPS gpulet's size is a percentage in (0, 100], not {size_pct:g}")
    env["CUDA_MPS_PIPE_DIRECTORY"] = slot.mps_pipe_dir
    env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = f"{size_pct:g}"
    if memory_limit_mb > 0:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={int(memory_limit_mb)}M"
    return env
