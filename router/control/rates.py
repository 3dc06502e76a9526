"""Measured request rates (pure state, clock passed in): EWMA over fixed buckets, and the rules
that say when a rate moved enough to re-plan.

Constants are the original's (reference/gpulet-paper.md section 7): 500 ms buckets, EWMA
weight 0.049 per bucket, plan for 1.2x the measured rate (1.5x below 125 req/s); re-plan a
model whose target rose by more than 5 % or 10 req/s, re-partition when it fell by more than 10 %.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

BUCKET_MS = 500.0
EWMA_WEIGHT = 0.049
HEADROOM = 1.2
LOW_RATE_RPS = 125.0
LOW_RATE_HEADROOM = 1.5
RISE_SHARE, RISE_RPS = 0.05, 10.0
FALL_SHARE = 0.10
RECENT_BUCKETS = 4  # `recent` spans 2 s


@dataclass
class RateMonitor:
    """Counts arrivals per model per bucket; folds each finished bucket into an EWMA."""

    bucket_ms: float = BUCKET_MS
    weight: float = EWMA_WEIGHT
    _bucket_start_ms: float | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _ewma_rps: dict[str, float] = field(default_factory=dict)
    # The last few finished buckets' counts, newest last: what `recent` averages.
    _history: deque[dict[str, int]] = field(default_factory=lambda: deque(maxlen=RECENT_BUCKETS))

    def record(self, model: str, now_ms: float, count: int = 1) -> None:
        self._advance(now_ms)
        self._counts[model] = self._counts.get(model, 0) + count

    def rates(self, now_ms: float) -> dict[str, float]:
        """The smoothed req/s per model seen so far (finished buckets only)."""
        self._advance(now_ms)
        return dict(self._ewma_rps)

    def recent(self, now_ms: float) -> dict[str, float]:
        """Req/s per model over the last RECENT_BUCKETS finished buckets (unsmoothed)."""
        self._advance(now_ms)
        if not self._history:
            return {}
        span_s = len(self._history) * self.bucket_ms / 1000
        totals: dict[str, int] = {}
        for counts in self._history:
            for model, n in counts.items():
                totals[model] = totals.get(model, 0) + n
        return {m: n / span_s for m, n in totals.items()}

    def _advance(self, now_ms: float) -> None:
        if self._bucket_start_ms is None:
            self._bucket_start_ms = now_ms
            return
        while now_ms - self._bucket_start_ms >= self.bucket_ms:
            models = set(self._counts) | set(self._ewma_rps)
            for model in models:
                observed = self._counts.get(model, 0) * 1000.0 / self.bucket_ms
                previous = self._ewma_rps.get(model)
                # The first bucket seeds the average; later ones move it by `weight`.
                self._ewma_rps[model] = (
                    observed if previous is None
                    else previous + self.weight * (observed - previous)
                )  # fmt: skip
            self._history.append(self._counts)
            self._counts = {}
            self._bucket_start_ms += self.bucket_ms


def target_rps(measured_rps: float) -> float:
    """The rate to plan for: headroom over what was measured, more of it at low rates."""
    factor = LOW_RATE_HEADROOM if measured_rps < LOW_RATE_RPS else HEADROOM
    return measured_rps * factor


@dataclass(frozen=True)
class RateChange:
    rose: tuple[str, ...]  # re-plan these (incrementally first)
    fell: tuple[str, ...]  # room to give back: a full re-partition may shrink the plan


def rate_change(planned: Mapping[str, float], target: Mapping[str, float]) -> RateChange:
    rose, fell = [], []
    for model in sorted(set(planned) | set(target)):
        before, now = planned.get(model, 0.0), target.get(model, 0.0)
        if now > before * (1 + RISE_SHARE) or now > before + RISE_RPS:
            rose.append(model)
        elif now < before * (1 - FALL_SHARE):
            fell.append(model)
    return RateChange(tuple(rose), tuple(fell))
