"""Which agent devices a host's GPUs become (pure): GPU facts and the MPS state in, `DeviceInfo`s
(kind "nvidia") and the slot each device's gpulets run in out.

    a GPU in MIG mode  -> one device per MIG instance present ("gpu0-mig1"), its one size the
                          instance's share of the GPU; none if it has no instance (we never
                          create instances: an admin does, with nvidia-smi mig)
    a GPU, MPS usable  -> one device ("gpu0") of the configured MPS sizes
    a GPU, MPS not     -> one device of size 100 only, shared by time slicing: percentages
                          would not be enforced, so the planner is not offered them
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.nvidia.mps import MpsState
from agent.nvidia.nvml import GpuFacts
from agent.nvidia.worker_env import SHARING_MIG, SHARING_MPS, SHARING_TIME, GpuSlot
from common.cluster import DeviceInfo

DEFAULT_MPS_SIZES = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)  # reference/gpulet-paper.md §1.3
WHOLE_GPU_PCT = 100.0


@dataclass(frozen=True)
class Inventory:
    devices: tuple[DeviceInfo, ...]
    slots: dict[str, GpuSlot]  # by device_id
    warnings: tuple[str, ...] = ()


def parse_sizes(text: str) -> tuple[float, ...]:
    """'20,40,100' -> (20.0, 40.0, 100.0); every size a percentage in (0, 100]."""
    try:
        sizes = tuple(sorted({float(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise ValueError(f"GPULET_MPS_SIZES={text!r}: use percentages, e.g. '20,40,50'") from None
    if not sizes or not all(0 < s <= WHOLE_GPU_PCT for s in sizes):
        raise ValueError(f"GPULET_MPS_SIZES={text!r}: sizes must lie in (0, 100]")
    return sizes


def select_gpus(gpus: Sequence[GpuFacts], wanted: str | None) -> tuple[GpuFacts, ...]:
    """The GPUs GPULET_NVIDIA_GPUS names (indexes or UUID prefixes), or all of them."""
    if not wanted:
        return tuple(gpus)
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    chosen = [
        g for g in gpus if any(n == str(g.index) or (n.startswith("GPU-") and g.uuid.startswith(n))
                               for n in names)
    ]  # fmt: skip
    if len(chosen) < len(names):
        known = [f"{g.index}:{g.uuid}" for g in gpus]
        raise ValueError(
            f"GPULET_NVIDIA_GPUS={wanted!r} names GPUs this host lacks; it has {known}"
        )
    return tuple(chosen)


def needs_mps(gpus: Sequence[GpuFacts]) -> tuple[str, ...]:
    """UUIDs of the GPUs an MPS daemon must serve: those not in MIG mode."""
    return tuple(g.uuid for g in gpus if not g.mig_enabled)


def build_inventory(
    gpus: Sequence[GpuFacts], mps_sizes: Sequence[float], mps: MpsState | None,
    pipe_dir: str | None,
) -> Inventory:  # fmt: skip
    devices: list[DeviceInfo] = []
    slots: dict[str, GpuSlot] = {}
    warnings: list[str] = []
    for gpu in gpus:
        about = f"{gpu.name}, compute capability {gpu.compute_capability_text}, {gpu.uuid}"
        if gpu.mig_enabled:
            if not gpu.mig:
                warnings.append(f"GPU {gpu.index} is in MIG mode with no instances: it serves "
                                "nothing until an admin creates them (nvidia-smi mig -cgi ... "
                                "-C); gpulet never changes MIG itself")  # fmt: skip
            for j, mig in enumerate(gpu.mig):
                device_id = f"gpu{gpu.index}-mig{j}"
                devices.append(DeviceInfo(
                    device_id, "nvidia", (), mig.memory_bytes, sizes=(mig.size_pct,),
                    sharing=SHARING_MIG, note=f"MIG {mig.profile} ({mig.uuid}) of {about}",
                ))  # fmt: skip
                slots[device_id] = GpuSlot(device_id, mig.uuid, SHARING_MIG)
            continue
        device_id = f"gpu{gpu.index}"
        if mps is not None and mps.usable:
            devices.append(DeviceInfo(
                device_id, "nvidia", (), gpu.memory_bytes, sizes=tuple(mps_sizes),
                sharing=SHARING_MPS, note=f"{about}; MPS {mps.reason}",
            ))  # fmt: skip
            slots[device_id] = GpuSlot(device_id, gpu.uuid, SHARING_MPS, pipe_dir)
            continue
        why = mps.reason if mps is not None else "MPS not tried"
        devices.append(DeviceInfo(
            device_id, "nvidia", (), gpu.memory_bytes, sizes=(WHOLE_GPU_PCT,),
            sharing=SHARING_TIME, note=f"{about}; time-sliced, whole-GPU gpulets only: MPS {why}",
        ))  # fmt: skip
        slots[device_id] = GpuSlot(device_id, gpu.uuid, SHARING_TIME)
    return Inventory(tuple(devices), slots, tuple(warnings))
