"""Device discovery. The CPU kind: the cores this agent may use form one device of core sets.
The simulated kind: N GPUs of a measured profile, served by agent/simulated.py."""

from __future__ import annotations

import os

from common.cluster import DEDICATED, SERVING_SHARED, DeviceInfo
from common.profiles import DeviceProfile

BYTES_PER_MB = 1024 * 1024  # profiles give GPU memory in MB as nvidia-smi does (MiB)
# GPULET_SERVING_CORES=auto: hosts with this many cores or more keep this many for serving.
AUTO_SERVING_FROM = 4
AUTO_SERVING_CORES = 1


def parse_cores(text: str) -> tuple[int, ...]:
    """'0-3,6' -> (0, 1, 2, 3, 6); raises ValueError with the offending part."""
    cores: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                cores.update(range(low, high + 1))
            else:
                cores.add(int(part))
        except ValueError:
            raise ValueError(f"bad core list part {part!r} in {text!r}; use e.g. '0-3,6'") from None
    if not cores:
        raise ValueError(f"core list {text!r} names no core")
    return tuple(sorted(cores))


def allowed_cores(cores_spec: str | None) -> tuple[int, ...]:
    """The cores we may run on: our affinity mask, narrowed by GPULET_AGENT_CORES if set."""
    allowed = set(os.sched_getaffinity(0))
    if cores_spec:
        wanted = set(parse_cores(cores_spec))
        outside = sorted(wanted - allowed)
        if outside:
            raise ValueError(
                f"GPULET_AGENT_CORES asks for cores {outside} outside this process's "
                f"allowed set {sorted(allowed)}"
            )
        allowed = wanted
    return tuple(sorted(allowed))


def serving_split(cores: tuple[int, ...], setting: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(cores kept for serving: router, agent, Redis; cores for workers) by
    GPULET_SERVING_CORES: a count, or `auto` (AUTO_SERVING_CORES from AUTO_SERVING_FROM cores
    up, else none: on a small host every core goes to the workers and the planner charges
    serving's CPU against them instead)."""
    text = setting.strip().lower()
    if text == "auto":
        count = AUTO_SERVING_CORES if len(cores) >= AUTO_SERVING_FROM else 0
    else:
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"GPULET_SERVING_CORES {setting!r}: use a count or 'auto'") from None
        if not 0 <= count < len(cores):
            raise ValueError(f"GPULET_SERVING_CORES {count}: leave the workers at least one of "
                             f"the {len(cores)} cores {list(cores)}")  # fmt: skip
    return cores[:count], cores[count:]


def discover_cpu(cores_spec: str | None, serving_cores: str = "0") -> DeviceInfo:
    """One device of the cores the workers may use; it says whether serving shares them."""
    serving, workers = serving_split(allowed_cores(cores_spec), serving_cores)
    return DeviceInfo(device_id="cpu0", kind="cpu", cores=workers,
                      sharing=DEDICATED if serving else SERVING_SHARED)  # fmt: skip


def discover_simulated(profile: DeviceProfile, count: int) -> tuple[DeviceInfo, ...]:
    """`count` simulated GPUs of `profile`: sim0..sim{count-1}, with the profile's memory."""
    if count < 1:
        raise ValueError(f"a simulated agent needs at least one device, not {count}")
    memory_bytes = int(profile.memory_mb * BYTES_PER_MB)
    return tuple(
        DeviceInfo(device_id=f"sim{i}", kind="simulated", cores=(), memory_bytes=memory_bytes)
        for i in range(count)
    )
