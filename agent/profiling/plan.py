"""What a CPU profile measures and how one is assembled (pure): the request, the run budget,
the reuse keys, which stored models are stale, and merging kept points with new ones.

Used by `agent.profiling.profiler.ensure_profile` (the flow) and `agent.profiling.measure` (the
measuring).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from common.models import CATALOG
from common.profiles import DeviceProfile

# The batches the issue asks for; the planner interpolates between them.
BATCHES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class RunBudget:
    """How many runs one (model, cores, batch) point gets, and when larger batches are skipped.

    Every point starts with one cold run (it allocates buffers for the new shape), which counts
    as the first warm-up. The point's runs then fit `point_budget_ms` where they can, but never
    fall below the cold run plus one timed run.
    """

    warmup_runs: int = 2
    repeat_runs: int = 5
    # 2 s per point keeps the slowest catalog model (ResNet-50, ~0.1 s per item on one core,
    # machine-notes section 3) under ~10 s per core-set size.
    point_budget_ms: float = 2000.0


def runs_for(first_ms: float, budget: RunBudget) -> tuple[int, int]:
    """(extra warm-ups, timed runs) after a cold run of `first_ms`.

    A point costs about (1 + warm-ups + runs)·first_ms ≤ point_budget_ms, so
    runs_left = floor(point_budget_ms / first_ms) - 1; timed runs take them first (1..R), extra
    warm-ups (0..W-1) what remains.
    """
    runs_left = math.floor(budget.point_budget_ms / max(first_ms, 1e-6)) - 1
    repeats = min(budget.repeat_runs, max(1, runs_left))
    warmups = min(budget.warmup_runs - 1, max(0, runs_left - repeats))
    return max(0, warmups), repeats


def next_batch_fits(batch: int, latency_ms: float, next_batch: int, budget: RunBudget) -> bool:
    """Whether one run at `next_batch` is predicted to stay within the point budget.

    On CPU latency grows close to linearly with batch (machine-notes section 3), so
    L(next) ≈ L(batch)·next/batch ≤ point_budget_ms.
    """
    return latency_ms * next_batch / batch <= budget.point_budget_ms


def measure_series(
    run_once: Callable[[int], float],
    batches: Sequence[int],
    budget: RunBudget,
    on_point: Callable[[int, float | None], None] | None = None,
) -> tuple[tuple[int, float], ...]:
    """((batch, median latency_ms), ...) of the batches measured, ascending.

    `run_once(batch)` runs one batch and returns its latency. Once a batch is predicted to
    exceed the budget, it and every larger batch are skipped (`on_point(batch, None)`): the
    profile then has no point there and raises ProfileGap, rather than holding a guess.
    """
    points: list[tuple[int, float]] = []
    stopped = False
    for batch in sorted(batches):
        if points and not stopped:
            stopped = not next_batch_fits(points[-1][0], points[-1][1], batch, budget)
        if stopped:
            if on_point is not None:
                on_point(batch, None)
            continue
        first_ms = run_once(batch)
        warmups, repeats = runs_for(first_ms, budget)
        for _ in range(warmups):
            run_once(batch)
        latency_ms = statistics.median([run_once(batch) for _ in range(repeats)])
        points.append((batch, latency_ms))
        if on_point is not None:
            on_point(batch, latency_ms)
    return tuple(points)


@dataclass(frozen=True)
class ProfileRequest:
    """What to measure: each model at each size (the first `size` cores) and batch."""

    models: tuple[str, ...]
    cores: tuple[int, ...]  # the device's cores; size k runs on cores[:k]
    sizes: tuple[int, ...]
    batches: tuple[int, ...] = BATCHES
    budget: RunBudget = field(default_factory=RunBudget)
    # The largest batch a model takes (a repository model's max_batch_size; 1 without a batch
    # axis): larger batches are not measured, so the planner never gives it one.
    max_batches: Mapping[str, int] = field(default_factory=dict)

    @property
    def total_points(self) -> int:
        return sum(len(self.batches_for(m)) for m in self.models) * len(self.sizes)

    def batches_for(self, model: str) -> tuple[int, ...]:
        limit = self.max_batches.get(model, 0)
        if not limit:
            return self.batches
        return tuple(b for b in self.batches if b <= limit) or (1,)

    def cores_for(self, size: int) -> tuple[int, ...]:
        return self.cores[:size]


def plan_request(
    models: Iterable[str],
    cores: Sequence[int],
    sizes: Iterable[int] | None = None,
    batches: Iterable[int] = BATCHES,
    budget: RunBudget | None = None,
    *,
    known: Collection[str] | None = None,
    max_batches: Mapping[str, int] | None = None,
) -> ProfileRequest:
    """Validate and order a request; `sizes` default to every core-set size 1..len(cores).
    Models must be in `known` (default: the catalog)."""
    names = tuple(dict.fromkeys(models))
    known = CATALOG if known is None else known
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(known)}")
    if not names or not cores:
        raise ValueError("a profile needs at least one model and one core")
    wanted = tuple(sorted(set(sizes))) if sizes is not None else tuple(range(1, len(cores) + 1))
    bad = [s for s in wanted if not 1 <= s <= len(cores)]
    if bad or not wanted:
        raise ValueError(f"sizes {list(wanted)} must lie in 1..{len(cores)} (the cores offered)")
    return ProfileRequest(
        names, tuple(cores), wanted, tuple(sorted(set(batches))), budget or RunBudget(),
        {m: b for m, b in (max_batches or {}).items() if m in names and b},
    )  # fmt: skip


@dataclass(frozen=True)
class MachineFacts:
    """What makes a measurement valid on another day: same CPU, same core count, same ORT."""

    cpu_model: str
    cores: int
    ort_version: str


def _sha256(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def machine_key(facts: MachineFacts) -> str:
    return _sha256(asdict(facts))


def profile_key(machine: str, fingerprints: Mapping[str, str]) -> str:
    """sha256 over the machine key and each model's fingerprint: equal keys, reusable profile."""
    return _sha256({"machine": machine, "models": dict(sorted(fingerprints.items()))})


def stale_models(
    meta: Mapping[str, Any] | None, request: ProfileRequest, fingerprints: Mapping[str, str]
) -> tuple[str, ...]:
    """The requested models that the stored meta does not cover as asked."""
    stored = (meta or {}).get("models", {})

    def covered(model: str) -> bool:
        entry = stored.get(model)
        return (
            entry is not None
            and entry.get("fingerprint") == fingerprints[model]
            and set(request.sizes) <= set(entry.get("sizes", ()))
            and list(request.batches_for(model)) == list(entry.get("batches", ()))
        )

    return tuple(m for m in request.models if not covered(m))


def merge_profiles(
    stored: DeviceProfile | None, keep: Iterable[str], measured: DeviceProfile
) -> DeviceProfile:
    """`measured` plus the stored points of the models in `keep` (still valid)."""
    kept = set(keep)
    points = dict(measured.latency_points)
    if stored is not None:
        points.update({k: v for k, v in stored.latency_points.items() if k[0] in kept})
    return DeviceProfile(
        name=measured.name,
        kind=measured.kind,
        sizes=measured.sizes,
        full_size=measured.full_size,
        memory_mb=measured.memory_mb,
        latency_points=dict(sorted(points.items())),
        source=measured.source,
    )
