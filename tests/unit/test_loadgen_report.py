"""loadgen's report arithmetic on hand-made records."""

from __future__ import annotations

import pytest

from loadgen.report import (
    CLIENT_OVERLOADED,
    TIMEOUT,
    TOTAL,
    Bucket,
    Record,
    Replan,
    Spread,
    build_report,
    time_series,
)


def rec(
    model: str,
    scheduled_s: float,
    latency_ms: float | None,
    *,
    status: int = 200,
    code: str | None = None,
    slo_ms: float = 100.0,
    lateness_ms: float = 0.0,
) -> Record:
    sent_s = scheduled_s + lateness_ms / 1000
    done_s = None if latency_ms is None else sent_s + latency_ms / 1000
    return Record(model, scheduled_s, sent_s, done_s, status, code, latency_ms, slo_ms)


def test_counts_goodput_attainment_and_errors() -> None:
    records = [
        rec("a", 2.0, 10.0),
        rec("a", 3.0, 100.0),  # exactly at the SLO: ok
        rec("a", 4.0, 150.0),  # late
        rec("a", 5.0, 5.0, status=503, code="overloaded"),
        rec("a", 6.0, 7.0, status=503, code="overloaded"),
        rec("a", 7.0, None, status=0, code=TIMEOUT),
        rec("b", 8.0, 20.0, slo_ms=30.0),
        rec("b", 9.0, 1.0, status=400, code="bad_request", slo_ms=30.0),
        rec("b", 10.0, None, status=0, code=CLIENT_OVERLOADED, slo_ms=30.0),
        rec("b", 11.0, 40.0, slo_ms=30.0),  # late
    ]
    report = build_report(records, warmup_s=0.0, duration_s=20.0, models={"a": 100.0, "b": 30.0})
    a, b = report.models
    assert (a.model, a.slo_ms, a.sent, a.ok, a.late) == ("a", 100.0, 6, 2, 1)
    assert a.errors == {"overloaded": 2, "timeout": 1}
    assert a.goodput_rps == pytest.approx(2 / 20)
    assert a.attainment == pytest.approx(2 / 6)
    # Answered: every HTTP answer (the 503s too), not the timeout.
    assert a.latency == Spread(count=5, p50_ms=10.0, p90_ms=150.0, p99_ms=150.0, max_ms=150.0)
    assert (b.sent, b.ok, b.late) == (4, 1, 1)
    assert b.errors == {"bad_request": 1, "client_overloaded": 1}
    total = report.total
    assert (total.model, total.slo_ms, total.sent, total.ok, total.late) == (TOTAL, None, 10, 3, 2)
    assert total.errors == {"bad_request": 1, "client_overloaded": 1, "overloaded": 2, "timeout": 1}
    assert total.goodput_rps == pytest.approx(3 / 20)
    assert total.attainment == pytest.approx(0.3)
    assert total.latency is not None and total.latency.count == 8


def test_warmup_is_trimmed_by_due_time() -> None:
    records = [rec("a", 0.5, 500.0), rec("a", 1.99, 10.0), rec("a", 2.0, 10.0), rec("a", 3.0, 20.0)]
    report = build_report(records, warmup_s=2.0, duration_s=4.0, models={"a": 100.0})
    (a,) = report.models
    assert (a.sent, a.ok, report.window_s) == (2, 2, 2.0)
    assert a.goodput_rps == pytest.approx(1.0)
    assert a.latency is not None and a.latency.max_ms == 20.0


def test_percentiles_are_nearest_rank() -> None:
    records = [rec("a", 1.0 + i / 100, float(i + 1)) for i in range(100)]
    report = build_report(records, warmup_s=0.0, duration_s=3.0, models={"a": 1000.0})
    assert report.total.latency == Spread(100, 50.0, 90.0, 99.0, 100.0)


def test_sender_lateness() -> None:
    records = [rec("a", float(i), 1.0, lateness_ms=float(i)) for i in range(1, 11)]
    report = build_report(records, warmup_s=1.0, duration_s=11.0, models={"a": 100.0})
    lateness = report.lateness
    assert lateness is not None and lateness.count == 10
    got = (lateness.p50_ms, lateness.p90_ms, lateness.p99_ms, lateness.max_ms)
    assert got == pytest.approx((5.0, 9.0, 10.0, 10.0))


def test_unknown_http_errors_get_their_status_as_code() -> None:
    report = build_report([rec("a", 1.0, 3.0, status=418)], warmup_s=0, duration_s=2,
                          models={"a": 100.0})  # fmt: skip
    assert report.total.errors == {"http_418": 1}


def test_a_model_without_requests() -> None:
    report = build_report([], warmup_s=0.0, duration_s=5.0, models={"a": 50.0})
    (a,) = report.models
    assert (a.sent, a.ok, a.attainment, a.goodput_rps, a.latency) == (0, 0, 0.0, 0.0, None)
    assert report.lateness is None


def test_time_series_buckets_by_completion() -> None:
    records = [
        rec("a", 0.1, 100.0),  # done 0.2: bucket 0, ok
        rec("a", 0.5, 600.0),  # done 1.1: bucket 1, late
        rec("a", 1.2, 50.0),  # done 1.25: bucket 1, ok
        rec("a", 1.5, 10.0, status=503, code="overloaded"),  # done 1.51: bucket 1, not ok
        rec("a", 2.5, None, status=0, code=TIMEOUT),  # no answer: offered only
    ]
    series = time_series(records, duration_s=3.0, bucket_s=1.0)
    assert series == (
        Bucket(0.0, offered_rps=2.0, ok_rps=1.0, p99_ms=100.0),
        Bucket(1.0, offered_rps=2.0, ok_rps=1.0, p99_ms=600.0),
        Bucket(2.0, offered_rps=1.0, ok_rps=0.0, p99_ms=None),
    )


def test_time_series_runs_until_the_last_answer_and_scales_by_bucket() -> None:
    series = time_series([rec("a", 0.0, 2500.0), rec("a", 0.2, 10.0)], duration_s=1.0, bucket_s=0.5)
    assert [b.start_s for b in series] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert series[0] == Bucket(0.0, offered_rps=4.0, ok_rps=2.0, p99_ms=10.0)
    assert series[5].p99_ms == 2500.0 and series[5].ok_rps == 0.0


def test_report_json_and_bad_windows() -> None:
    report = build_report([rec("a", 1.0, 3.0)], warmup_s=0.5, duration_s=2.0, models={"a": 9.0},
                          replans=[Replan(1.5, 4)])  # fmt: skip
    data = report.to_json()
    assert data["total"]["ok"] == 1 and data["replans"] == [{"at_s": 1.5, "version": 4}]
    assert data["models"][0]["latency"]["p99_ms"] == 3.0
    with pytest.raises(ValueError, match="warm-up"):
        build_report([], warmup_s=2.0, duration_s=2.0, models={})
