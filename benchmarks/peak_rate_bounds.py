"""peak_rate.py's goals, constants and pure arithmetic: bounds, shares, ratios."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from common.interference import Corunner, InterferenceModel
from common.profiles import DeviceProfile
from common.scenarios import PACKAGED_SCENARIOS, Scenario
from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import layouts

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX_GPULETS = (2, 5)

# Goals from the issue.
BOUND_GAIN_SHARE_GOAL = 0.90  # gpulet+int's gain over temporal vs the bound's gain (a100)
IDEAL_RATIO_GOAL = 0.95  # gpulet+int / ideal where ideal completes
PLAN_TIME_GOALS_S = {64: 0.050, 256: 1.0}  # devices -> plan time goal

# Plan-time demand set: the a100-class profile's models plus one duplicate instance.
PLAN_TIME_PROFILE = "a100-class"
PLAN_TIME_DUPLICATE = "resnet50"
PLAN_TIME_SLO_FACTOR = 5.0  # SLO = 5 x batch-1 latency at 100 % x latency margin
PLAN_TIME_FRACTIONS = (0.5, 0.8)  # demand rate as a share of the fluid bound
PLAN_TIME_SCHEDULERS = ("temporal", "gpulet", "gpulet+int")
PLAN_TIME_REPEATS = 5

TEMPORAL_NA = "n/a (no 100 % data above batch 1)"
GAIN_EPS = 1e-9


def default_scenarios_dir() -> Path:
    env = os.environ.get("GPULET_SCENARIOS_DIR")
    return Path(env) if env else PACKAGED_SCENARIOS


# ---------------------------------------------------------------- pure: bounds and ratios


def interference_aware_throughput(
    perf: PerfModel,
    interference: InterferenceModel,
    model: str,
    slo_ms: float,
    layout: Sequence[float],
) -> float:
    """Req/s one device laid out as `layout` gives `model` in every part, all saturated.

    A part alone on its device runs solo. With two or more parts, part i's slowdown is
    alpha_i = slowdown(Corunner(model, b_i, s_i), the other parts at their solo saturated
    batches), and it serves T_sat(model, s_i, SLO, alpha_i) (PerfModel.saturated under alpha).
    Parts too small to meet the SLO even solo stay idle and disturb no one.
    """
    solo = [(size, perf.saturated(model, size, slo_ms)) for size in layout]
    active = [(size, choice.batch) for size, choice in solo if choice is not None]
    total = 0.0
    for i, (size, batch) in enumerate(active):
        others = [Corunner(model, b, s) for j, (s, b) in enumerate(active) if j != i]
        alpha = interference.slowdown(Corunner(model, batch, size), others) if others else 1.0
        choice = perf.saturated(model, size, slo_ms, alpha)
        total += choice.throughput_rps if choice else 0.0
    return total


def interference_aware_bound(
    perf: PerfModel,
    interference: InterferenceModel,
    models: Sequence[tuple[str, float, float]],  # (model, slo_ms, weight)
    devices: int,
    sizes: Sequence[float],
    max_parts: int,
) -> float:
    """The fluid bound with each layout's parts slowed by interference: N / sum(w_m / best_m)."""
    options = layouts(sizes, perf.profile.full_size, max_parts)
    demand_per_rps = 0.0
    for model, slo_ms, weight in models:
        best = max(
            (interference_aware_throughput(perf, interference, model, slo_ms, lay)
             for lay in options),
            default=0.0,
        )  # fmt: skip
        if best <= 0:
            return 0.0
        demand_per_rps += weight / best
    return devices / demand_per_rps


def bound_share(peak_gi: float, peak_t: float, bound_k: float, bound_t: float) -> float | None:
    """Share of the bound's gain over temporal that gpulet+int achieves over temporal."""
    if peak_t <= 0 or bound_t <= 0:
        return None
    bound_gain = bound_k / bound_t - 1
    if bound_gain <= GAIN_EPS:
        return None
    return (peak_gi / peak_t - 1) / bound_gain


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def temporal_data_limited(profile: DeviceProfile, models: Sequence[str]) -> bool:
    """True when some model has no whole-device measurement above batch 1."""
    return any(profile.max_batch(m, profile.full_size) <= 1 for m in models)


def scenario_models(scenario: Scenario) -> list[tuple[str, float, float]]:
    return [(m.model, m.slo_ms, m.weight) for m in scenario.models]
