"""What an open-loop run measured, per model and in total; pure arithmetic over its records.

`runner` produces the records; `cli` prints the report and `plot` draws its time series.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from loadgen.closed_loop import percentile

OK_STATUS = 200
# Codes of requests that got no HTTP answer (status 0); the router's own codes come from its body.
CLIENT_OVERLOADED = "client_overloaded"  # not sent: the loadgen's in-flight bound was reached
TIMEOUT = "timeout"  # no answer within the client's timeout
CONNECTION_ERROR = "connection_error"  # refused, reset or closed before an answer
TOTAL = "total"
DEFAULT_BUCKET_S = 1.0


@dataclass(frozen=True)
class Record:
    """One scheduled request; times in seconds from the run's start."""

    model: str
    scheduled_s: float
    sent_s: float  # when the sender got to it (for CLIENT_OVERLOADED: when it gave up)
    done_s: float | None  # answer, timeout or error; None when never sent
    status: int  # HTTP status; 0 when no answer came
    code: str | None  # None for 200; else the error's code (router's or the client's own)
    latency_ms: float | None  # from sent to answer; None without an HTTP answer
    slo_ms: float

    @property
    def answered(self) -> bool:
        return self.status != 0 and self.latency_ms is not None

    @property
    def ok(self) -> bool:
        latency_ms = self.latency_ms
        return self.status == OK_STATUS and latency_ms is not None and latency_ms <= self.slo_ms

    @property
    def late(self) -> bool:
        latency_ms = self.latency_ms
        return self.status == OK_STATUS and latency_ms is not None and latency_ms > self.slo_ms


@dataclass(frozen=True)
class Spread:
    """Nearest-rank percentiles of a set of durations, in ms."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Spread | None:
        if not values_ms:
            return None
        return cls(
            count=len(values_ms),
            p50_ms=percentile(values_ms, 50),
            p90_ms=percentile(values_ms, 90),
            p99_ms=percentile(values_ms, 99),
            max_ms=max(values_ms),
        )


@dataclass(frozen=True)
class ModelStats:
    """One model (or TOTAL) over the measured window."""

    model: str
    slo_ms: float | None  # None for TOTAL, whose models may differ
    sent: int  # requests due in the window, whether or not they got out
    ok: int  # 200 within the SLO
    late: int  # 200 over the SLO
    errors: Mapping[str, int]  # code -> count, for every non-200
    goodput_rps: float  # ok / window_s
    attainment: float  # ok / sent (0 when nothing was sent)
    latency: Spread | None  # of answered requests (any HTTP status)


@dataclass(frozen=True)
class Bucket:
    """One `bucket_s` slice of the whole run (warm-up included), by completion time."""

    start_s: float
    offered_rps: float  # requests due in the slice
    ok_rps: float  # answered 200 within the SLO in the slice
    p99_ms: float | None  # of the answers in the slice; None without any


@dataclass(frozen=True)
class Replan:
    """The router's placement changed to `version` at about `at_s`."""

    at_s: float
    version: int


@dataclass(frozen=True)
class Report:
    warmup_s: float
    duration_s: float
    window_s: float  # duration_s - warmup_s: the span goodput is counted over
    models: tuple[ModelStats, ...]
    total: ModelStats
    lateness: Spread | None  # sender lateness: sent_s - scheduled_s, over the window
    bucket_s: float
    series: tuple[Bucket, ...]
    replans: tuple[Replan, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (lists, dicts, numbers; None for missing spreads)."""
        data: dict[str, Any] = orjson.loads(orjson.dumps(self))  # orjson encodes dataclasses
        return data


def model_stats(
    model: str, slo_ms: float | None, records: Sequence[Record], window_s: float
) -> ModelStats:
    ok = sum(1 for r in records if r.ok)
    errors = Counter(r.code or f"http_{r.status}" for r in records if r.status != OK_STATUS)
    return ModelStats(
        model=model,
        slo_ms=slo_ms,
        sent=len(records),
        ok=ok,
        late=sum(1 for r in records if r.late),
        errors=dict(sorted(errors.items())),
        goodput_rps=ok / window_s if window_s > 0 else 0.0,
        attainment=ok / len(records) if records else 0.0,
        latency=Spread.of(
            [r.latency_ms for r in records if r.answered and r.latency_ms is not None]
        ),
    )


def time_series(
    records: Iterable[Record], duration_s: float, bucket_s: float = DEFAULT_BUCKET_S
) -> tuple[Bucket, ...]:
    """Per `bucket_s`: offered (by due time), ok/s and p99 (by completion time)."""
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, got {bucket_s}")
    offered: Counter[int] = Counter()
    ok: Counter[int] = Counter()
    latencies: defaultdict[int, list[float]] = defaultdict(list)
    count = max(1, math.ceil(duration_s / bucket_s))
    for r in records:
        offered[math.floor(r.scheduled_s / bucket_s)] += 1
        if r.done_s is None or not r.answered or r.latency_ms is None:
            continue
        index = math.floor(r.done_s / bucket_s)
        count = max(count, index + 1)  # answers after the end get their buckets too
        latencies[index].append(r.latency_ms)
        if r.ok:
            ok[index] += 1
    return tuple(
        Bucket(
            start_s=i * bucket_s,
            offered_rps=offered[i] / bucket_s,
            ok_rps=ok[i] / bucket_s,
            p99_ms=percentile(latencies[i], 99) if latencies[i] else None,
        )
        for i in range(count)
    )


def build_report(
    records: Sequence[Record],
    *,
    warmup_s: float,
    duration_s: float,
    models: Mapping[str, float],
    bucket_s: float = DEFAULT_BUCKET_S,
    replans: Sequence[Replan] = (),
) -> Report:
    """Trim the warm-up (requests due before `warmup_s`), then count per model and in total.

    `models` maps each served name to its SLO and fixes the rows' order; a record of a model not
    in it still counts in the total.
    """
    if not 0 <= warmup_s < duration_s:
        raise ValueError(f"warm-up {warmup_s} s must be within [0, duration {duration_s} s)")
    window_s = duration_s - warmup_s
    measured = [r for r in records if r.scheduled_s >= warmup_s]
    by_model: defaultdict[str, list[Record]] = defaultdict(list)
    for r in measured:
        by_model[r.model].append(r)
    rows = tuple(model_stats(name, slo, by_model[name], window_s) for name, slo in models.items())
    lateness = Spread.of([(r.sent_s - r.scheduled_s) * 1000 for r in measured])
    return Report(
        warmup_s=warmup_s,
        duration_s=duration_s,
        window_s=window_s,
        models=rows,
        total=model_stats(TOTAL, None, measured, window_s),
        lateness=lateness,
        bucket_s=bucket_s,
        series=time_series(records, duration_s, bucket_s),
        replans=tuple(replans),
    )
