"""Latency estimates and the Nexus batch rules for one plan (pure; caches live per plan).

    L̂(m, b, s) = margin · L(m, b, s) · α          (reference/gpulet-paper.md §2.1; α ≥ 1)
Saturated gpu-let (always busy):  largest b ≤ max_batch with 2·L̂(b) ≤ SLO;
    duty = L̂(b), throughput = 1000·b / L̂(b)   (a request may wait one whole batch, then run).
Residual gpu-let (rate r):         largest b with L̂(b) + duty ≤ SLO, duty = max(1000·b/r, L̂(b));
    throughput = 1000·b / duty   (fill the batch, then run it). The original checks
    L̂ + 1000·b/r ≤ SLO, which misses the case L̂ > b/r: a request then waits a whole L̂-long
    cycle, so the worst case is 2·L̂ and must meet the SLO too.
The original also adds a host-side batching cost; our profiles time the whole batch, and the
1.1 margin stands for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.profiles import DeviceProfile, ProfileGap
from router.scheduling.types import PlanConfig

# The knee ignores steps that gain less than this ratio of throughput (the original's 1.05).
FLAT_STEP_RATIO = 1.05


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    latency_ms: float  # L̂(b): the estimate, margin and slowdown included
    duty_cycle_ms: float
    throughput_rps: float

    @property
    def occupancy(self) -> float:
        return self.latency_ms / self.duty_cycle_ms if self.duty_cycle_ms > 0 else 0.0


class PerfModel:
    """Estimates for one profile and config; memoised for the life of one plan."""

    def __init__(self, profile: DeviceProfile, config: PlanConfig) -> None:
        self.profile = profile
        self.config = config
        self._tables: dict[tuple[str, float], list[float | None]] = {}
        self._saturated: dict[tuple[str, float, float, float], BatchChoice | None] = {}

    def _table(self, model: str, size: float) -> list[float | None]:
        """margin·L(b) for b = 0..max_batch (index 0 unused); None where unmeasured."""
        key = (model, size)
        table = self._tables.get(key)
        if table is None:
            table = [None]
            for batch in range(1, self.config.max_batch + 1):
                try:
                    solo = self.profile.latency_ms(model, batch, size)
                except ProfileGap:
                    solo = None
                table.append(None if solo is None else self.config.latency_margin * solo)
            self._tables[key] = table
        return table

    def estimate_ms(self, model: str, batch: int, size: float, alpha: float = 1.0) -> float | None:
        """L̂ in ms, or None where the profile has no measurement (never extrapolated)."""
        if not 1 <= batch <= self.config.max_batch:
            return None
        base = self._table(model, size)[batch]
        return None if base is None else base * alpha

    def saturated(
        self, model: str, size: float, slo_ms: float, alpha: float = 1.0
    ) -> BatchChoice | None:
        key = (model, size, slo_ms, alpha)
        if key not in self._saturated:
            self._saturated[key] = self._find_saturated(model, size, slo_ms, alpha)
        return self._saturated[key]

    def _find_saturated(
        self, model: str, size: float, slo_ms: float, alpha: float
    ) -> BatchChoice | None:
        best: BatchChoice | None = None
        for batch in range(1, self.config.max_batch + 1):
            latency = self.estimate_ms(model, batch, size, alpha)
            if latency is None:
                break
            # 2·L̂(b) ≤ SLO: one batch of waiting, one of running.
            if 2 * latency <= slo_ms:
                best = BatchChoice(batch, latency, latency, 1000 * batch / latency)
        return best

    def residual(
        self, model: str, size: float, slo_ms: float, rate_rps: float, alpha: float = 1.0
    ) -> BatchChoice | None:
        if rate_rps <= 0:
            return None
        best: BatchChoice | None = None
        for batch in range(1, self.config.max_batch + 1):
            latency = self.estimate_ms(model, batch, size, alpha)
            if latency is None:
                break
            fill_ms = 1000 * batch / rate_rps
            duty = max(fill_ms, latency)
            # L̂(b) + duty ≤ SLO: wait one cycle (fill, or the batch ahead), then run.
            if latency + duty <= slo_ms:
                best = BatchChoice(batch, latency, duty, 1000 * batch / duty)
            elif best is not None:
                break  # L̂ + duty grows with b (as the original's binary search assumes)
        if best is None:
            # A rate too low to fill even one batch within the SLO (the original's corner
            # case): run batch 1 on a shorter cycle, d = SLO - L̂(1), so L̂ + d = SLO; the
            # gpu-let then serves up to 1000/d req/s, more than the rate asks.
            latency = self.estimate_ms(model, 1, size, alpha)
            if latency is not None and 2 * latency <= slo_ms:
                duty = slo_ms - latency
                best = BatchChoice(1, latency, duty, 1000 / duty)
        return best

    def best_split_rps(self, model: str, slo_ms: float, sizes: Sequence[float]) -> float:
        """Most req/s two partitions of one device (s, full - s) give the model, saturated."""
        full = self.profile.full_size
        best = 0.0
        for size in sizes:
            rest = full - size
            if 0 < size < full and rest in sizes:
                a, b = self.saturated(model, size, slo_ms), self.saturated(model, rest, slo_ms)
                best = max(best, (a.throughput_rps if a else 0) + (b.throughput_rps if b else 0))
        return best

    def knee(
        self, model: str, slo_ms: float, sizes: Sequence[float], *, include_full: bool = False
    ) -> float | None:
        """The most efficient size: upper end of the steepest throughput-per-size step.

        Steps ending at the whole device are left out (as in the original), so a saturated
        gpu-let leaves room beside it; with a single partial size that size is the knee.
        """
        usable = [s for s in sorted(sizes) if self.saturated(model, s, slo_ms) is not None]
        partial = (
            usable if include_full else [s for s in usable if s < self.profile.full_size]
        ) or usable
        if not partial:
            return None
        best, best_gain = partial[0], 0.0
        for low, high in zip(partial, partial[1:], strict=False):
            t_low = self.saturated(model, low, slo_ms)
            t_high = self.saturated(model, high, slo_ms)
            assert t_low is not None and t_high is not None
            if t_high.throughput_rps / t_low.throughput_rps < FLAT_STEP_RATIO:
                continue
            gain = (t_high.throughput_rps - t_low.throughput_rps) / (high - low)
            if gain > best_gain:
                best, best_gain = high, gain
        return best
