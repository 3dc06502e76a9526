"""When to re-plan (pure): the rates to plan for and whether they moved enough.

Each model's rate is known two ways: the EWMA (rates.py; smooth, but ten seconds behind a step)
and the last two seconds (current, but noisy). Both are counts of Poisson-like arrivals, so each
comes with a spread, and the decision uses bounds two spreads wide:
- a rise re-plans at once when even the *lower* bound of either estimate, with headroom
  (rates.target_rps), is past the plan by the original's threshold (5 % or 10 req/s);
- a fall re-plans at an epoch boundary when even the *upper* bound is below the plan by 10 %;
- a plan is made for the upper bound of either, with headroom.
Noise alone then almost never crosses the band between what was planned and what triggers, so
a step brings one re-plan, not one per wobble of a climbing average. Nothing re-plans while a
switch is in progress.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from common.placement import Placement
from router.control.rates import BUCKET_MS, EWMA_WEIGHT, RECENT_BUCKETS, rate_change, target_rps

# Every served model keeps a gpu-let, planned for at least this rate, so its first request after
# a quiet spell is served rather than refused.
FLOOR_RPS = 1.0
SPREADS = 2.0  # bounds are this many standard deviations from the estimate
RECENT_S = RECENT_BUCKETS * BUCKET_MS / 1000
# An EWMA of Poisson bucket rates has the bucket's variance times w / (2 - w).
EWMA_VARIANCE_SHARE = EWMA_WEIGHT / (2 - EWMA_WEIGHT)

Reason = Literal["rise", "fall"]


@dataclass(frozen=True)
class Targets:
    confident: dict[str, float]  # with headroom, from the lower bounds: what triggers a rise
    plan: dict[str, float]  # with headroom, from the upper bounds: what to plan for


def bounds(smoothed: float, recent: float) -> tuple[float, float]:
    """(lower, upper) req/s the model is receiving, by either estimate."""
    spread_smoothed = math.sqrt(smoothed * EWMA_VARIANCE_SHARE / (BUCKET_MS / 1000))
    spread_recent = math.sqrt(max(recent, 1 / RECENT_S) / RECENT_S)
    lower = max(smoothed - SPREADS * spread_smoothed, recent - SPREADS * spread_recent, 0.0)
    upper = max(smoothed + SPREADS * spread_smoothed, recent + SPREADS * spread_recent)
    return lower, upper


def target_rates(
    models: Sequence[str], smoothed: Mapping[str, float], recent: Mapping[str, float]
) -> Targets:
    confident, plan = {}, {}
    for model in models:
        lower, upper = bounds(smoothed.get(model, 0.0), recent.get(model, 0.0))
        confident[model] = max(target_rps(lower), FLOOR_RPS)
        plan[model] = max(target_rps(upper), FLOOR_RPS)
    return Targets(confident, plan)


def planned_rates(placement: Placement) -> dict[str, float]:
    planned: dict[str, float] = {}
    for gpulet in placement.gpulets:
        for model in gpulet.models:
            planned[model.name] = planned.get(model.name, 0.0) + model.planned_rps
    return planned


def replan_reason(
    planned: Mapping[str, float],
    targets: Targets,
    *,
    epoch_due: bool,
    switching: bool,
) -> tuple[Reason | None, tuple[str, ...]]:
    """(why to re-plan now or None, the models whose demand moved)."""
    if switching:
        return None, ()
    rose = rate_change(planned, targets.confident).rose
    fell = rate_change(planned, targets.plan).fell
    if rose:
        return "rise", tuple(sorted(set(rose) | set(fell)))
    if fell and epoch_due:
        return "fall", fell
    return None, ()
