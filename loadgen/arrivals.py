"""When each request is due: Poisson and Gamma arrivals, trace steps and recorded replays.

Pure: randomness comes in as a seeded `numpy.random.Generator`; `runner` sends what this plans.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from common.scenarios import Scenario

Process = Literal["poisson", "gamma"]
PROCESSES: tuple[Process, ...] = ("poisson", "gamma")
Times = npt.NDArray[np.float64]

# Draw inter-arrivals in chunks of the expected count plus this many standard deviations
# (Poisson count: sd = sqrt(n)), so one draw almost always covers the whole window.
_CHUNK_SD = 6.0
_CHUNK_MIN = 16
# Before a trace's first step the rate is weight · base_rps · this (the README leaves it open;
# every shared trace starts with a step at 0 s, so this only matters for hand-made ones).
TRACE_MULTIPLIER_BEFORE_FIRST_STEP = 1.0


class Arrival(NamedTuple):
    """One request: due `at_s` seconds after the start, for the served name `model`."""

    at_s: float
    model: str


@dataclass(frozen=True)
class Segment:
    """A constant rate over [start_s, end_s)."""

    start_s: float
    end_s: float
    rate_rps: float


def _renewal_times(
    draw: Iterable[Times], rate_rps: float, duration_s: float, start_s: float
) -> Times:
    """Cumulative sums of inter-arrival chunks from `draw`, kept while below the window's end."""
    if rate_rps <= 0 or duration_s <= 0:
        return np.empty(0, dtype=np.float64)
    end_s = start_s + duration_s
    parts: list[Times] = []
    last_s = start_s
    for gaps in draw:
        times = last_s + np.cumsum(gaps)
        if times[-1] >= end_s:
            parts.append(times[times < end_s])
            break
        parts.append(times)
        last_s = float(times[-1])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def _chunk(rate_rps: float, duration_s: float) -> int:
    expected = rate_rps * duration_s
    return max(_CHUNK_MIN, math.ceil(expected + _CHUNK_SD * math.sqrt(expected)))


def poisson_times(
    rate_rps: float, duration_s: float, rng: np.random.Generator, *, start_s: float = 0.0
) -> Times:
    """Arrival times of a Poisson process: exponential gaps with mean 1/rate, CV 1."""
    size = _chunk(rate_rps, duration_s)

    def draw() -> Iterable[Times]:
        while True:
            yield rng.exponential(1.0 / rate_rps, size)

    return _renewal_times(draw(), rate_rps, duration_s, start_s)


def gamma_times(
    rate_rps: float,
    cv: float,
    duration_s: float,
    rng: np.random.Generator,
    *,
    start_s: float = 0.0,
) -> Times:
    """Arrival times with Gamma gaps of mean 1/rate and coefficient of variation `cv`.

    Gamma(k, θ) has mean kθ and CV 1/√k, so k = 1/cv² and θ = 1/(rate·k); cv = 1 is Poisson.
    """
    if cv <= 0:
        raise ValueError(f"cv must be positive, got {cv}")
    shape = 1.0 / cv**2
    scale = 1.0 / (rate_rps * shape) if rate_rps > 0 else 0.0
    size = _chunk(rate_rps, duration_s)

    def draw() -> Iterable[Times]:
        while True:
            yield rng.gamma(shape, scale, size)

    return _renewal_times(draw(), rate_rps, duration_s, start_s)


def segment_times(
    segments: Sequence[Segment],
    rng: np.random.Generator,
    *,
    process: Process = "poisson",
    cv: float = 1.0,
) -> Times:
    """A piecewise-constant rate: each segment generated on its own, in order."""
    parts: list[Times] = []
    for seg in segments:
        span_s = seg.end_s - seg.start_s
        if process == "poisson":
            parts.append(poisson_times(seg.rate_rps, span_s, rng, start_s=seg.start_s))
        else:
            parts.append(gamma_times(seg.rate_rps, cv, span_s, rng, start_s=seg.start_s))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def rate_segments(
    scenario: Scenario, rate: float | None, duration_s: float
) -> dict[str, tuple[Segment, ...]]:
    """Per served model, the rate over time.

    sweep: weight · rate; fixed: weight (req/s; `rate` is not used); trace: from each step's
    `at_s` on, weight · base_rps · multiplier, with `rate` (if given) replacing base_rps.
    """
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    if scenario.mode == "trace":
        base_rps = scenario.base_rps if rate is None else rate
        steps = sorted(scenario.steps, key=lambda s: s.at_s)
        bounds = [(0.0, TRACE_MULTIPLIER_BEFORE_FIRST_STEP)]
        bounds += [(max(0.0, s.at_s), s.multiplier) for s in steps]
        # A step at 0 s replaces the default before it; later duplicates keep the last.
        starts: dict[float, float] = dict(bounds)
        ordered = sorted(starts.items())
        out: dict[str, tuple[Segment, ...]] = {}
        for m in scenario.models:
            segs = []
            for i, (start_s, multiplier) in enumerate(ordered):
                end_s = ordered[i + 1][0] if i + 1 < len(ordered) else duration_s
                end_s = min(end_s, duration_s)
                if end_s > start_s:
                    segs.append(Segment(start_s, end_s, m.weight * base_rps * multiplier))
            out[m.name] = tuple(segs)
        return out
    if scenario.mode == "sweep" and rate is None:
        raise ValueError(f"{scenario.name} is a sweep scenario: give the rate r (--rate)")
    rates: Mapping[str, float] = scenario.rates_at(rate if rate is not None else 0.0)
    return {name: (Segment(0.0, duration_s, r),) for name, r in rates.items()}


def merge(streams: Mapping[str, Times]) -> list[Arrival]:
    """One time-ordered list from per-model times (ties keep the models' order)."""
    names = list(streams)
    if not names:
        return []
    times = np.concatenate([streams[n] for n in names])
    which = np.concatenate([np.full(len(streams[n]), i) for i, n in enumerate(names)])
    order = np.argsort(times, kind="stable")
    return [
        Arrival(float(t), names[int(i)]) for t, i in zip(times[order], which[order], strict=True)
    ]


def schedule(
    scenario: Scenario,
    rate: float | None,
    duration_s: float,
    rng: np.random.Generator,
    *,
    process: Process = "poisson",
    cv: float = 1.0,
) -> list[Arrival]:
    """Every request of a run, sorted by due time: one arrival stream per model, merged."""
    if process not in PROCESSES:
        raise ValueError(f"unknown arrival process {process!r}; known: {', '.join(PROCESSES)}")
    segments = rate_segments(scenario, rate, duration_s)
    streams = {
        name: segment_times(segs, rng, process=process, cv=cv) for name, segs in segments.items()
    }
    return merge(streams)


def parse_replay(lines: Iterable[str], *, source: str = "replay") -> list[Arrival]:
    """Lines of `timestamp model` (comma or whitespace between; `#` starts a comment).

    Timestamps are seconds, relative or absolute: all are shifted so the earliest is 0.
    """
    raw: list[tuple[float, str]] = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].replace(",", " ").strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 2:
            raise ValueError(
                f"{source} line {number}: expected 'timestamp model', got {line.rstrip()!r}"
            )
        try:
            at_s = float(fields[0])
        except ValueError:
            raise ValueError(
                f"{source} line {number}: timestamp {fields[0]!r} is not a number"
            ) from None
        if not math.isfinite(at_s):
            raise ValueError(f"{source} line {number}: timestamp {fields[0]!r} is not finite")
        raw.append((at_s, fields[1]))
    if not raw:
        return []
    first_s = min(t for t, _ in raw)
    shifted = [Arrival(t - first_s, model) for t, model in raw]
    return sorted(shifted, key=lambda a: a.at_s)


def read_replay(path: Path) -> list[Arrival]:
    """A recorded file of `timestamp model` lines (see `parse_replay`)."""
    with path.open() as handle:
        return parse_replay(handle, source=str(path))
