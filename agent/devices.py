"""Device discovery. The CPU kind: the cores this agent may use form one device of core sets."""

from __future__ import annotations

import os

from common.cluster import DeviceInfo


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


def discover_cpu(cores_spec: str | None) -> DeviceInfo:
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
    return DeviceInfo(device_id="cpu0", kind="cpu", cores=tuple(sorted(allowed)))
