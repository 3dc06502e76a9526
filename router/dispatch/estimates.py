"""Learned batch latency per (gpu-let, model) (pure): what the dispatcher predicts with.

A batch of b items sent to an idle gpu-let is answered after
    hop(b) + compute(b)
where compute(b) is what the worker measured (`compute_ms` in its reply) and hop(b) the rest of
the router's round trip (router -> agent -> worker IPC, framing, the reply's way back). Each is a
fixed per-batch cost plus a per-item cost:
    compute(b) = fixed_ms + scale x prior(b)     prior: the profile's L(b) x planned interference
    hop(b)     = fixed_ms + per_item_ms x b
(with no profile, e.g. the static rule, compute's per-item part is per_item_ms x b as for hop).
The profile gives compute's shape in b (sub-linear on GPUs); the fit says how this gpu-let and
model differ from it: a session call the profile did not time, a neighbour, a busy CPU.

Both lines are fitted by weighted least squares over the pair's own samples, pulled toward the
prior by pseudo-samples that sit on it, at one item and at the planned batch size (PRIOR_WEIGHT
each: at full sample weight the prior moves a fit by a few per cent; inside the range batches
span, they hold the fit where samples are missing without levering it where they are). Samples
lose weight with age (half-life DECAY_HALF_LIFE_MS) and their total weight is capped
(MAX_SAMPLE_WEIGHT), so a busy gpu-let follows its last few dozen batches, and one that stops
getting samples (e.g. every request refused on a pessimistic figure) drifts back to the profile
within about 20 s: no figure is final. Nothing divides by a prediction, so a tiny or zero prior
is as good as any. One pair's samples never touch another pair's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Weight of each of the two pseudo-samples that hold a fit near its prior (profile, or 0 ms).
PRIOR_WEIGHT = 0.5
# Samples halve in weight every this long: a gpu-let that stops getting samples (refused,
# idle) is back near its profile after a few half-lives.
DECAY_HALF_LIFE_MS = 2_000.0
# The samples' total weight never exceeds this: the fit follows about the last this-many
# batches however busy the gpu-let is, and decay acts as fast at 1,000 req/s as at 1.
MAX_SAMPLE_WEIGHT = 32.0


@dataclass(frozen=True)
class Line:
    """y = fixed_ms + slope x x, never below 0."""

    fixed_ms: float
    slope: float

    def at(self, x: float) -> float:
        return max(0.0, self.fixed_ms + self.slope * x)


@dataclass
class _Sums:
    """Time-decayed weighted sums of (x, y) samples."""

    w: float = 0.0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    xy: float = 0.0
    at_ms: float = 0.0

    def decay_to(self, now_ms: float) -> None:
        if now_ms > self.at_ms and self.w > 0:
            self._scale(0.5 ** ((now_ms - self.at_ms) / DECAY_HALF_LIFE_MS))
        self.at_ms = max(self.at_ms, now_ms)

    def add(self, x: float, y: float, now_ms: float) -> None:
        self.decay_to(now_ms)
        self.w += 1.0
        self.x += x
        self.y += y
        self.xx += x * x
        self.xy += x * y
        if self.w > MAX_SAMPLE_WEIGHT:
            self._scale(MAX_SAMPLE_WEIGHT / self.w)

    def _scale(self, factor: float) -> None:
        self.w *= factor
        self.x *= factor
        self.y *= factor
        self.xx *= factor
        self.xy *= factor


def fit(sums: _Sums, prior: Line, prior_xs: tuple[float, float]) -> Line:
    """Least squares over the samples and the two prior pseudo-samples (on `prior`, at
    `prior_xs`). Where the samples do not tell the slope apart (one batch size only), the
    pseudo-samples do; a negative slope (noise) is read as flat."""
    w, sx, sy, sxx, sxy = sums.w, sums.x, sums.y, sums.xx, sums.xy
    for x in prior_xs:
        y = prior.at(x)
        w += PRIOR_WEIGHT
        sx += PRIOR_WEIGHT * x
        sy += PRIOR_WEIGHT * y
        sxx += PRIOR_WEIGHT * x * x
        sxy += PRIOR_WEIGHT * x * y
    mean_x, mean_y = sx / w, sy / w
    var_x = sxx / w - mean_x * mean_x
    if var_x <= 1e-12 * max(1.0, mean_x * mean_x):
        slope = prior.slope  # every x the same: the data cannot tell the slope
    else:
        slope = max(0.0, (sxy / w - mean_x * mean_y) / var_x)
    return Line(mean_y - slope * mean_x, slope)


@dataclass(frozen=True)
class Estimate:
    """The fitted figures of one (gpu-let, model): what `predict` and `hop` answer from."""

    prior_ms: tuple[float, ...]  # prior compute for 1..n items (index b - 1); () when none
    compute: Line  # over x = prior(b), or x = b when there is no prior
    hop: Line  # over x = b
    samples: float  # the samples' current weight (0: the prior alone)

    def compute_ms(self, items: int) -> float:
        return self.compute.at(_x(self.prior_ms, items))

    def hop_ms(self, items: int) -> float:
        return self.hop.at(float(items))

    def latency_ms(self, items: int) -> float:
        """Sent to an idle gpu-let, answered this long after."""
        return self.hop_ms(items) + self.compute_ms(items)

    def per_batch_ms(self) -> float:
        """What a batch costs beyond its items: L(1) - (L(2) - L(1)), at least 0. Not the
        lines' fixed parts: compute's is over the prior, not over items, and goes negative
        when the profile's own fixed part is larger than the worker's (a refusal once read
        "per batch -78.4 ms" for a model it predicted right)."""
        one, two = self.latency_ms(1), self.latency_ms(2)
        return max(0.0, 2.0 * one - two)

    def factor(self, items: int) -> float | None:
        """Learned compute ÷ prior at `items` (None without a prior to compare with)."""
        prior = _prior_at(self.prior_ms, items)
        return None if prior <= 0 else self.compute_ms(items) / prior

    def to_json(self, items: int) -> dict[str, float | None]:
        factor = self.factor(items)
        return {
            "latency_ms": round(self.latency_ms(items), 3),
            "per_batch_ms": round(self.per_batch_ms(), 3),
            "compute_ms": round(self.compute_ms(items), 3),
            "hop_ms": round(self.hop_ms(items), 3),
            "profile_ms": round(_prior_at(self.prior_ms, items), 3) if self.prior_ms else None,
            "factor": None if factor is None else round(factor, 3),
            "samples": round(self.samples, 2),
        }


class Learner:
    """Samples of one (gpu-let, model) and the estimate they give; the clock is passed in."""

    def __init__(self, prior_ms: Sequence[float], batch_size: int = 1) -> None:
        self.prior_ms = prior_table(prior_ms)
        self.batch_size = max(1, batch_size)
        self._compute = _Sums()
        self._hop = _Sums()
        top = self.batch_size
        self._compute_xs = (_x(self.prior_ms, 1), _x(self.prior_ms, top))
        self._hop_xs = (1.0, float(top))
        # With a profile the prior is the profile itself; without, 0 ms until measured.
        self._compute_prior = Line(0.0, 1.0) if self.prior_ms else Line(0.0, 0.0)
        self._hop_prior = Line(0.0, 0.0)
        self.estimate = self._fit()

    def record(
        self, items: int, compute_ms: float, round_trip_ms: float | None, now_ms: float
    ) -> None:
        """One answered batch: the worker's compute time and the router's round trip (None
        when the batch waited at the worker behind another: its hop is not its own)."""
        compute_ms = max(0.0, compute_ms)
        self._compute.add(_x(self.prior_ms, items), compute_ms, now_ms)
        if round_trip_ms is not None:
            self._hop.add(float(items), max(0.0, round_trip_ms - compute_ms), now_ms)
        self.estimate = self._fit()

    def refresh(self, now_ms: float) -> Estimate:
        """The estimate with samples aged to `now_ms` (no samples since: it drifts to prior)."""
        self._compute.decay_to(now_ms)
        self._hop.decay_to(now_ms)
        self.estimate = self._fit()
        return self.estimate

    def _fit(self) -> Estimate:
        return Estimate(
            self.prior_ms,
            fit(self._compute, self._compute_prior, self._compute_xs),
            fit(self._hop, self._hop_prior, self._hop_xs),
            self._compute.w,
        )


def prior_table(latency_ms: Sequence[float]) -> tuple[float, ...]:
    """A prior as learners keep it: () when it predicts nothing (no profile, or all 0 ms)."""
    return tuple(latency_ms) if any(p > 0 for p in latency_ms) else ()


def _prior_at(prior_ms: tuple[float, ...], items: int) -> float:
    """The prior for `items`; past the table, its last entry per item (never optimistic)."""
    if not prior_ms:
        return 0.0
    if items <= len(prior_ms):
        return prior_ms[items - 1]
    return prior_ms[-1] * items / len(prior_ms)


def _x(prior_ms: tuple[float, ...], items: int) -> float:
    """Compute's regressor: the prior's latency, or the item count when there is no prior."""
    return _prior_at(prior_ms, items) if prior_ms else float(items)
