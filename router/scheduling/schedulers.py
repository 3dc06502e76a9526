"""Every scheduler on one interface: `plan(name, demands, devices, config, interference)`.

    temporal    whole devices only; Nexus squishy bin packing (saturate, residual, time-share)
    greedy      smallest partition whose throughput covers the remaining rate; no temporal
                sharing, no interference (the original's GSLICE-like `greedy_part`)
    gpulet      elastic partitioning without the interference model
    gpulet+int  elastic partitioning with it
    ideal       every combination of per-device layouts, each planned with its partitions fixed
                under every policy variant, plus the elastic planner's own plans (whose layouts
                are among those combinations, but whose assignment a fixed-layout pass need not
                repeat); the best plan wins. Refuses clusters too large to search.
All share one latency model (router/scheduling/perf.py), so they differ only in their policy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from common.interference import InterferenceModel
from common.profiles import DeviceProfile
from router.scheduling.elastic import Planner
from router.scheduling.perf import PerfModel
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig

SCHEDULERS = ("temporal", "greedy", "gpulet", "gpulet+int", "ideal")
IDEAL_MAX_CASES = 3000
# Homogeneous layouts are tried on small clusters only: there one layout choice decides much of
# the capacity, while on large ones each costs a full plan and the adaptive variants can adapt.
HOMOGENEOUS_MAX_DEVICES = 16
# Below this gain from splitting one device, a model gets whole devices in that variant: the
# measured a100-class co-location slowdown has median 1.31 (common/data).
SPLIT_GAIN_FOR_WHOLE = 1.3  # layout combinations the ideal search will try before it refuses


class SearchTooLarge(ValueError):
    """The ideal search would try more layout combinations than IDEAL_MAX_CASES."""


def config_for(name: str, base: PlanConfig) -> PlanConfig:
    if name == "temporal":
        return replace(base, allow_split=False, interference=False, allow_temporal_sharing=True)
    if name == "greedy":
        return replace(base, interference=False, allow_temporal_sharing=False)
    if name == "gpulet":
        return replace(base, interference=False)
    if name in ("gpulet+int", "ideal"):
        return replace(base, interference=True)
    raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")


def plan(
    name: str,
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    config: PlanConfig | None = None,
    interference: InterferenceModel | None = None,
) -> Plan:
    config = config_for(name, config or PlanConfig())
    if name == "ideal":
        return plan_ideal(demands, devices, config, interference)
    if name in ("gpulet", "gpulet+int") and config.portfolio:
        perf = PerfModel(devices[0].profile, config)
        return first_feasible(portfolio(name, demands, devices, config, interference, perf))
    planner = Planner(name, devices, config, interference, greedy=name == "greedy")
    return planner.plan(demands)


# The policy variants of the elastic planner: the original's best fit; best fit that compares
# fitting slots by what their device then serves (helps when neighbours interfere); and a knee
# that may be the whole device (splitting only where it pays once interference is counted).
# Order only changes which feasible plan is kept, never whether one is found; the cheapest
# and (on the a100-class profile) most often feasible variant goes first.
VARIANT_CHANGES: tuple[dict[str, object], ...] = (
    {"min_split_gain": SPLIT_GAIN_FOR_WHOLE},
    {},
    {"min_split_gain": SPLIT_GAIN_FOR_WHOLE, "compare_fits": 6},
    {"compare_fits": 6},
    {"whole_knee": True},
    {"whole_knee": True, "compare_fits": 6},
)


def portfolio(
    name: str,
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    config: PlanConfig,
    interference: InterferenceModel | None,
    perf: PerfModel,
) -> Iterator[Plan]:
    """The elastic planner under each policy variant, then on each homogeneous layout (every
    device split alike: a handful of the ideal search's cases), lazily, cheapest first."""
    policies = variants(config)
    for policy in policies:
        yield Planner(name, devices, policy, interference, perf=perf).plan(demands)
    profile = devices[0].profile
    homogeneous = (
        layouts(profile.sizes, profile.full_size, config.max_gpulets_per_device)
        if len(devices) <= HOMOGENEOUS_MAX_DEVICES
        else []
    )
    for layout in homogeneous:
        if len(layout) < 2:
            continue  # whole devices only: what the variants above already try first
        for policy in policies[:2]:
            yield Planner(
                name, devices, policy, interference, perf=perf,
                frozen_layout=[layout] * len(devices),
            ).plan(demands)  # fmt: skip
    most = kind_max_gpulets(profile)
    if config.more_gpulets and most > config.max_gpulets_per_device:
        for policy in variants(replace(config, max_gpulets_per_device=most)):
            yield Planner(name, devices, policy, interference, perf=perf).plan(demands)


def kind_max_gpulets(profile: DeviceProfile) -> int:
    """As many gpu-lets as the smallest allowed size fits in the whole device."""
    smallest = min(profile.sizes) if profile.sizes else profile.full_size
    return max(1, int(profile.full_size // smallest))


def variants(config: PlanConfig) -> list[PlanConfig]:
    found = [replace(config, **change) for change in VARIANT_CHANGES]  # type: ignore[arg-type]
    if not config.interference:
        found = [v for v in found if v.compare_fits == 1]  # comparing fits needs interference
    return list(dict.fromkeys(found))


def plan_rank(result: Plan) -> tuple[bool, float, int]:
    """Feasible first, then least unmet demand, then fewest devices."""
    return (not result.feasible, sum(result.shortfall_rps.values()), result.devices_used)


def best_of(results: Iterable[Plan]) -> Plan:
    return min(results, key=plan_rank)


def first_feasible(results: Iterable[Plan]) -> Plan:
    """The first feasible plan in variant order (later ones cannot change the answer to
    "can this be served?"), else the one with the least unmet demand. Lazy: stops early."""
    tried = []
    for result in results:
        if result.feasible:
            return result
        tried.append(result)
    return best_of(tried)


def layouts(sizes: Sequence[float], full: float, max_parts: int) -> list[tuple[float, ...]]:
    """Every multiset of allowed sizes that fills a device exactly, largest size first."""
    found: list[tuple[float, ...]] = []
    ordered = sorted(set(sizes), reverse=True)

    def extend(prefix: tuple[float, ...], left: float, start: int) -> None:
        if math.isclose(left, 0.0, abs_tol=1e-9):
            found.append(prefix)
            return
        if len(prefix) == max_parts:
            return
        for i in range(start, len(ordered)):
            if ordered[i] <= left + 1e-9:
                extend((*prefix, ordered[i]), left - ordered[i], i)

    extend((), full, 0)
    return found


def ideal_cases(device_count: int, layout_count: int) -> int:
    """Multisets of `device_count` layouts from `layout_count` (devices are identical)."""
    return math.comb(layout_count + device_count - 1, device_count)


def plan_ideal(
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    config: PlanConfig,
    interference: InterferenceModel | None,
) -> Plan:
    profile = devices[0].profile
    options = layouts(profile.sizes, profile.full_size, config.max_gpulets_per_device)
    cases = ideal_cases(len(devices), len(options))
    if cases > IDEAL_MAX_CASES:
        raise SearchTooLarge(
            f"ideal: {len(devices)} devices x {len(options)} layouts = {cases} combinations, "
            f"more than {IDEAL_MAX_CASES}; too large to search"
        )
    best: Plan | None = None
    tried = 0
    policies = variants(config)
    perf = PerfModel(profile, config)
    # Every layout under every placement policy we have (the elastic variants and greedy's),
    # all judged by ideal's own latency model, interference included.
    rules = [(policy, False) for policy in policies] + [(config, True)]
    for combo in itertools.combinations_with_replacement(options, len(devices)):
        for policy, greedy in rules:
            tried += 1
            result = Planner(
                "ideal", devices, policy, interference, frozen_layout=combo, perf=perf,
                greedy=greedy,
            ).plan(demands)  # fmt: skip
            if result.feasible and (best is None or result.devices_used < best.devices_used):
                best = result
    unfrozen = best_of(
        Planner("ideal", devices, policy, interference, perf=perf, greedy=greedy).plan(demands)
        for policy, greedy in rules
    )
    if unfrozen.feasible and (best is None or unfrozen.devices_used < best.devices_used):
        best = unfrozen
    if best is None:
        return Plan(
            scheduler="ideal",
            feasible=False,
            gpulets=(),
            devices_used=0,
            explanation=(f"ideal: none of {tried} layout combinations is feasible",),
            shortfall_rps={d.name: d.rate_rps for d in demands},
        )
    return replace(
        best,
        explanation=(f"ideal: best of {tried} layout combinations", *best.explanation),
    )
