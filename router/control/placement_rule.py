"""The static placement rule used until the gpu-let scheduler replaces it (pure).

1. Count gpulets: one per model while cores suffice, else one per core (k = min(models, cores)).
2. Give each CPU device a share of the k gpulets in proportion to its cores (largest remainder),
   and split its cores into that many contiguous core sets, as even as possible.
3. Assign models to gpulets largest first, each to the least-loaded gpulet (LPT), with the
   model's default SLO as its cost until profiles exist. When models outnumber cores, several
   share one gpulet: one worker process that time-shares them, since two processes on one core
   only split it (machine-notes section 3) and each costs its own memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.cluster import AgentInfo, DeviceInfo
from common.models import CATALOG, PROFILE_MODEL_SLO_MS
from common.placement import GpuletModel, GpuletSpec, Placement


def _cost(name: str) -> float:
    """A model's cost for the rule: its catalog SLO; a repository model's is not known here."""
    spec = CATALOG.get(name)
    return spec.default_slo_ms if spec is not None else PROFILE_MODEL_SLO_MS


def static_placement(agents: Sequence[AgentInfo], models: Sequence[str]) -> Placement:
    devices = [
        (agent, device)
        for agent in sorted(agents, key=lambda a: a.agent_id)
        for device in agent.devices
        if device.kind == "cpu" and device.cores
    ]
    total_cores = sum(len(d.cores) for _, d in devices)
    if not models or total_cores == 0:
        reason = "no agent with CPU cores has registered" if models else "no models to serve"
        return Placement(version=0, gpulets=(), explanation=(reason,), unplaced=tuple(models))

    # Step 1 and 2.
    count = min(len(models), total_cores)
    shares = _largest_remainder([len(d.cores) for _, d in devices], count)
    slots: list[tuple[AgentInfo, DeviceInfo, tuple[int, ...]]] = []
    for (agent, device), share in zip(devices, shares, strict=True):
        for cores in split_evenly(device.cores, share):
            slots.append((agent, device, cores))

    # Step 3.
    loads = [0.0] * len(slots)
    assigned: list[list[str]] = [[] for _ in slots]
    for name in sorted(models, key=lambda m: (-_cost(m), m)):
        # Least load per core; ties to the first slot, so the plan is deterministic.
        target = min(range(len(slots)), key=lambda i: (loads[i] / len(slots[i][2]), i))
        assigned[target].append(name)
        loads[target] += _cost(name)

    gpulets = []
    explanation = [f"static rule: {len(models)} models over {total_cores} cores -> {count} gpulets"]
    for (agent, device, cores), names in zip(slots, assigned, strict=True):
        gpulet_id = f"{agent.agent_id}.{device.device_id}.c{'_'.join(map(str, cores))}"
        gpulets.append(
            GpuletSpec(
                gpulet_id=gpulet_id,
                agent_id=agent.agent_id,
                device_id=device.device_id,
                cores=cores,
                size=float(len(cores)),
                models=tuple(GpuletModel(n) for n in sorted(names)),
            )
        )
        explanation.append(
            f"{gpulet_id}: {len(cores)} core(s) {list(cores)} serve {', '.join(sorted(names))}"
            + (" (time-shared)" if len(names) > 1 else "")
        )
    return Placement(version=0, gpulets=tuple(gpulets), explanation=tuple(explanation))


def _largest_remainder(weights: Sequence[int], total: int) -> list[int]:
    """Split `total` in proportion to `weights`, never giving an entry more than its weight."""
    whole = sum(weights)
    exact = [w * total / whole for w in weights]
    shares = [min(int(e), w) for e, w in zip(exact, weights, strict=True)]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    left = total - sum(shares)
    for i in order * 2:
        if left == 0:
            break
        if shares[i] < weights[i]:
            shares[i] += 1
            left -= 1
    return shares


def split_evenly(cores: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """Contiguous chunks whose sizes differ by at most one: (0,1,2), 2 -> [(0, 1), (2,)]."""
    if parts <= 0:
        return []
    size, extra = divmod(len(cores), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(tuple(cores[start:end]))
        start = end
    return chunks
