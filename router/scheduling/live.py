"""Planning for the running system (pure): agents' devices and a profile in, a `Placement` out.

Demands are the served models with their SLOs, at declared rates, or, when none are declared,
at the largest equal rate r the devices can carry (a peak search, as `gpulet peak` does):
every model then gets the same share of what the hardware can give under its SLO. The plan's
gpu-lets become concrete partitions: on a CPU device, core sets; a gpu-let the running
placement already has (same size, same models) keeps its cores, so its worker keeps serving,
and the others take contiguous free cores in plan order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from common.cluster import DEDICATED, AgentInfo, DeviceInfo
from common.interference import InterferenceModel, NoInterference
from common.placement import GpuletModel, GpuletSpec, Placement
from common.profiles import DeviceProfile
from router.scheduling.peak import peak_search
from router.scheduling.replan import Step, replan
from router.scheduling.serving_cpu import charged_pool, plan_serving
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig, PlannedGpulet

# The equal-rate search: req/s resolution and ceiling per model.
SEARCH_STEP_RPS = 1.0
SEARCH_MAX_RPS = 100_000.0


@dataclass(frozen=True)
class LivePlan:
    placement: Placement  # version 0: the store assigns the real one
    plan: Plan
    rate_rps: float | None  # the equal rate planned for, when no rates were declared


def cpu_devices(
    agents: Sequence[AgentInfo], profile: DeviceProfile
) -> tuple[list[Device], dict[str, tuple[int, ...]]]:
    """The agents' devices the profile describes, and each one's core ids (CPU only).

    CPU devices get the profile sized to their own cores; simulated GPUs take it whole; NVIDIA
    GPUs take it with the sizes they offer (nvidia_profile).
    """
    devices = []
    cores_of: dict[str, tuple[int, ...]] = {}
    for agent in sorted(agents, key=lambda a: a.agent_id):
        for info in agent.devices:
            if info.kind == "simulated" and profile.kind != "cpu":
                device_id = f"{agent.agent_id}/{info.device_id}"
                devices.append(Device(device_id, agent.agent_id, profile))
                cores_of[device_id] = ()
                continue
            if info.kind == "nvidia" and profile.kind == "nvidia":
                sized_gpu = nvidia_profile(info, profile)
                if sized_gpu is not None:
                    device_id = f"{agent.agent_id}/{info.device_id}"
                    devices.append(Device(device_id, agent.agent_id, sized_gpu))
                    cores_of[device_id] = ()
                continue
            if info.kind != "cpu" or not info.cores or profile.kind != "cpu":
                continue
            cores = float(len(info.cores))
            sized = replace(
                profile,
                sizes=tuple(s for s in profile.sizes if s <= cores),
                full_size=cores,
            )
            device_id = f"{agent.agent_id}/{info.device_id}"
            devices.append(Device(device_id, agent.agent_id, sized))
            cores_of[device_id] = info.cores
    return devices, cores_of


def serving_shared(agents: Sequence[AgentInfo]) -> frozenset[str]:
    """Ids (as `cpu_devices` names them) of the CPU devices whose cores serving shares."""
    return frozenset(f"{a.agent_id}/{d.device_id}" for a in agents for d in a.devices
                     if d.kind == "cpu" and d.sharing != DEDICATED)  # fmt: skip


def nvidia_profile(info: DeviceInfo, profile: DeviceProfile) -> DeviceProfile | None:
    """The profile as one real GPU offers it; None when it offers no size the profile covers.

    Sizes are % of a GPU, the partition a gpulet's size. An MPS GPU offers its configured
    sizes, a time-sliced one 100 only (no share is enforced); a MIG instance is a device of its
    own whose one size (and whole) is its share, its latency interpolated between the
    profile's MPS sizes: an estimate, since MIG also splits memory and L2. Sizes outside the
    profile's measured range are dropped: the planner never extrapolates.
    """
    low, high = profile.sizes[0], profile.sizes[-1]
    sizes = tuple(s for s in (info.sizes or profile.sizes) if low <= s <= high)
    if not sizes:
        return None
    memory_mb = info.memory_bytes / 2**20 if info.memory_bytes else profile.memory_mb
    full_size = sizes[-1] if info.sharing == "mig" else profile.full_size
    return replace(profile, sizes=sizes, full_size=full_size, memory_mb=memory_mb)


def plan_live(
    agents: Sequence[AgentInfo],
    profile: DeviceProfile,
    slos_ms: Mapping[str, float],
    rates_rps: Mapping[str, float],
    scheduler: str,
    config: PlanConfig | None = None,
    interference: InterferenceModel | None = None,
    serving_ms: Mapping[str, float] | None = None,
    running: Sequence[GpuletSpec] = (),
) -> LivePlan | None:
    """The placement to deploy; None when there are no devices or no model fits at all.
    `serving_ms`: the router and agent's CPU per request of each model, charged against the
    CPU devices serving shares (serving_cpu.py). `running`: the gpu-lets deployed now, whose
    cores a gpu-let the plan keeps stays on."""
    devices, cores_of = cpu_devices(agents, profile)
    if not devices:
        return None
    config = config or PlanConfig()
    interference = interference or NoInterference()
    names = sorted(slos_ms)
    shared = serving_shared(agents)

    def at(rate: float) -> Plan:
        demands = [
            ModelDemand(n, n, rates_rps.get(n, rate) if rates_rps else rate, slos_ms[n])
            for n in names
        ]
        return plan_serving(scheduler, demands, devices, config, interference,
                            serving_ms or {}, shared)  # fmt: skip

    if rates_rps:
        result, equal_rate = at(0.0), None
    else:
        peak = peak_search(at, SEARCH_STEP_RPS, SEARCH_MAX_RPS)
        if peak.plan is None or not peak.plan.feasible:
            return None
        result, equal_rate = peak.plan, peak.rate_rps
    return LivePlan(to_placement(result, devices, cores_of, running), result, equal_rate)


def replan_live(
    agents: Sequence[AgentInfo],
    profile: DeviceProfile,
    previous: Plan,
    slos_ms: Mapping[str, float],
    rates_rps: Mapping[str, float],
    scheduler: str,
    config: PlanConfig | None = None,
    interference: InterferenceModel | None = None,
    changed: set[str] | None = None,
    serving_ms: Mapping[str, float] | None = None,
    running: Sequence[GpuletSpec] = (),
) -> tuple[LivePlan, Step] | None:
    """A new plan for new rates from the running one: incremental, then full, then one more
    device (replan.py); None when there are no devices."""
    devices, cores_of = cpu_devices(agents, profile)
    if not devices:
        return None
    demands = [ModelDemand(n, n, rates_rps[n], slos_ms[n]) for n in sorted(slos_ms)]
    pool = charged_pool(devices, demands, serving_ms or {}, serving_shared(agents))
    result = replan(scheduler, previous, demands, pool, config or PlanConfig(),
                    interference or NoInterference(), changed)  # fmt: skip
    placement = to_placement(result.plan, devices, cores_of, running)
    return LivePlan(placement, result.plan, None), result.step


def to_placement(
    result: Plan,
    devices: Sequence[Device],
    cores_of: Mapping[str, Sequence[int]],
    running: Sequence[GpuletSpec] = (),
) -> Placement:
    by_id = {d.device_id: d for d in devices}
    agents = {d.device_id: d.agent_id for d in devices}
    ordered = sorted(result.gpulets, key=lambda g: (g.device_id, -g.size))
    cores_by_gpulet = core_sets(ordered, cores_of, running)
    gpulets = []
    count: dict[str, int] = {}
    for position, gpulet in enumerate(ordered):
        device = by_id[gpulet.device_id]
        agent_id = agents[device.device_id]
        device_name = device.device_id.split("/", 1)[1]
        index = count.get(device.device_id, 0)
        count[device.device_id] = index + 1
        cores = list(cores_by_gpulet[position])
        if cores_of[device.device_id]:  # a CPU: its core set is the partition
            gpulet_id = f"{agent_id}.{device_name}.c{'_'.join(map(str, cores))}"
        else:  # a GPU share: its size is the partition
            gpulet_id = f"{agent_id}.{device_name}.p{index}"
        gpulets.append(
            GpuletSpec(
                gpulet_id=gpulet_id,
                agent_id=agent_id,
                device_id=device_name,
                cores=tuple(cores),
                size=gpulet.size,
                duty_cycle_ms=round(gpulet.duty_cycle_ms, 3),
                slowdown=round(gpulet.slowdown, 4),
                models=tuple(
                    GpuletModel(m.name, m.batch, round(m.rate_rps, 3)) for m in gpulet.models
                ),
            )
        )
    unplaced = tuple(sorted({name for name, gap in result.shortfall_rps.items() if gap > 0}))
    return Placement(0, tuple(gpulets), explanation=result.explanation, unplaced=unplaced)


def core_sets(
    gpulets: Sequence[PlannedGpulet],
    cores_of: Mapping[str, Sequence[int]],
    running: Sequence[GpuletSpec],
) -> list[tuple[int, ...]]:
    """Each gpu-let's cores (empty on a device without cores). A gpu-let the running placement
    has (same device, size and models) keeps the cores it runs on while they are free: a
    re-plan that only moves rates, or reorders equal gpu-lets, restarts no worker. The others
    take the lowest contiguous run of free cores, else the lowest free cores."""
    kept: dict[tuple[object, ...], list[tuple[int, ...]]] = {}
    for spec in running:
        if spec.cores:
            key = (f"{spec.agent_id}/{spec.device_id}", spec.size, spec.model_names)
            kept.setdefault(key, []).append(spec.cores)
    free = {device: list(cores) for device, cores in cores_of.items()}
    chosen: list[tuple[int, ...] | None] = [None] * len(gpulets)
    for position, gpulet in enumerate(gpulets):
        candidates = kept.get(
            (gpulet.device_id, gpulet.size, tuple(m.name for m in gpulet.models)), []
        )
        for held in candidates:
            if len(held) == int(gpulet.size) and set(held) <= set(free[gpulet.device_id]):
                chosen[position] = held
                candidates.remove(held)
                free[gpulet.device_id] = [c for c in free[gpulet.device_id] if c not in held]
                break
    out = []
    for position, gpulet in enumerate(gpulets):
        found = chosen[position]
        if found is None:
            found = _take(free[gpulet.device_id], int(gpulet.size))
            free[gpulet.device_id] = [c for c in free[gpulet.device_id] if c not in found]
        out.append(found)
    return out


def _take(free: Sequence[int], size: int) -> tuple[int, ...]:
    """`size` of the `free` cores (in device order): the first run of consecutive core ids
    that fits, else the first `size`."""
    for start in range(len(free) - size + 1):
        run = free[start : start + size]
        if all(later == earlier + 1 for earlier, later in zip(run, run[1:], strict=False)):
            return tuple(run)
    return tuple(free[:size])
