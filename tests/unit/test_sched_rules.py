"""Scheduler rules on a hand-made profile: L̂, saturated and residual batch, knee, estimate."""

from __future__ import annotations

import pytest

from router.scheduling.elastic import Planner
from router.scheduling.perf import PerfModel
from router.scheduling.types import PlanConfig
from tests.support.sched_hand import (
    EXACT,
    HAND,
    SIZES,
    demand,
    devices,
)

pytestmark = pytest.mark.timeout(120)


# L̂ -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "batch", "size", "alpha", "expected"),
    [
        pytest.param(EXACT, 10, 40.0, 1.0, 9.0, id="exact"),
        pytest.param(PlanConfig(), 10, 40.0, 1.0, 9.9, id="margin-1.1"),
        pytest.param(EXACT, 10, 40.0, 2.0, 18.0, id="alpha-2"),
        pytest.param(PlanConfig(), 10, 40.0, 2.0, 19.8, id="margin-and-alpha"),
        # 70 % was not measured: halfway between 60 (4 + 2.75) and 80 (4 + 1.875).
        pytest.param(EXACT, 10, 70.0, 1.0, 6.3125, id="size-interpolated"),
        pytest.param(EXACT, 33, 40.0, 1.0, None, id="batch-beyond-profile"),
        pytest.param(EXACT, 1, 10.0, 1.0, None, id="size-below-profile"),
    ],
)
def test_estimate_ms(
    config: PlanConfig, batch: int, size: float, alpha: float, expected: float | None
) -> None:
    got = PerfModel(HAND, config).estimate_ms("m", batch, size, alpha)
    assert got == (None if expected is None else pytest.approx(expected))


# saturated: largest b with 2·L̂(b) ≤ SLO --------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "size", "slo_ms", "alpha", "expected"),
    [
        # 4 + 0.5b ≤ 20: b = 32 (the cap), T = 32000/20
        pytest.param(EXACT, 40.0, 40.0, 1.0, (32, 20.0, 1600.0), id="capped-at-32"),
        # 4 + 0.5b ≤ 10: b = 12, T = 12000/10
        pytest.param(EXACT, 40.0, 20.0, 1.0, (12, 10.0, 1200.0), id="slo-bound"),
        # 2·4.5 = 9 ≤ 9: batch 1 only
        pytest.param(EXACT, 40.0, 9.0, 1.0, (1, 4.5, 1000 / 4.5), id="batch-1-exactly"),
        pytest.param(EXACT, 40.0, 8.9, 1.0, None, id="even-batch-1-fails"),
        # 1.1·(4 + 0.5b) ≤ 10: b = 10 (L̂ 9.9); b = 11 gives 10.45
        pytest.param(PlanConfig(), 40.0, 20.0, 1.0, (10, 9.9, 10000 / 9.9), id="margin-1.1"),
        # 2·(4 + 0.5b) ≤ 20: b = 12, L̂ 20
        pytest.param(EXACT, 40.0, 40.0, 2.0, (12, 20.0, 600.0), id="alpha-2"),
        pytest.param(
            PlanConfig(latency_margin=1.0, max_batch=8),
            40.0,
            40.0,
            1.0,
            (8, 8.0, 1000.0),
            id="max-batch-8",
        ),
        # 4 + 2b ≤ 20: b = 8
        pytest.param(EXACT, 20.0, 40.0, 1.0, (8, 20.0, 400.0), id="size-20"),
        pytest.param(EXACT, 100.0, 40.0, 1.0, (32, 6.4, 5000.0), id="size-100"),
    ],
)
def test_saturated(
    config: PlanConfig,
    size: float,
    slo_ms: float,
    alpha: float,
    expected: tuple[int, float, float] | None,
) -> None:
    got = PerfModel(HAND, config).saturated("m", size, slo_ms, alpha)
    if expected is None:
        assert got is None
        return
    batch, latency, throughput = expected
    assert got is not None
    # always busy: duty = L̂
    assert (got.batch, got.latency_ms, got.duty_cycle_ms, got.throughput_rps) == pytest.approx(
        (batch, latency, latency, throughput)
    )
    assert got.occupancy == pytest.approx(1.0)
    assert 2 * got.latency_ms <= slo_ms + 1e-9


# residual: largest b with L̂(b) + d ≤ SLO, d = max(1000·b/r, L̂(b)) -----------------------------
@pytest.mark.parametrize(
    ("config", "rate_rps", "slo_ms", "expected"),
    [
        # 4 + 0.5b + b ≤ 40: b = 24; fill 24 > L 16: duty 24, T = r
        pytest.param(EXACT, 1000.0, 40.0, (24, 16.0, 24.0, 1000.0), id="fill-bound"),
        # at the cap 32: L 20 > fill 8, so d = L and 2·20 ≤ 40; T 1600 < r
        pytest.param(EXACT, 4000.0, 40.0, (32, 20.0, 20.0, 1600.0), id="execution-bound"),
        # L > fill at every batch, so 2·L ≤ 30: b 22, L 15. (L + fill ≤ 30 alone would take
        # b 32, L 20, whose requests wait a whole 20 ms batch: 40 ms.)
        pytest.param(EXACT, 4000.0, 30.0, (22, 15.0, 15.0, 22000 / 15), id="execution-bound-2L"),
        # 4 + 0.5b + 10b ≤ 40: b = 3; fill 30
        pytest.param(EXACT, 100.0, 40.0, (3, 5.5, 30.0, 100.0), id="low-rate"),
        # 4.5 + 100 > 40 at b = 1: corner case, duty = SLO - L̂(1) = 35.5, T = 1000/35.5 > r
        pytest.param(EXACT, 10.0, 40.0, (1, 4.5, 35.5, 1000 / 35.5), id="corner-case"),
        # 1.1·(4 + 0.5b) + b ≤ 40: 4.4 + 1.55b ≤ 40: b = 22, L̂ 16.5, fill 22
        pytest.param(PlanConfig(), 1000.0, 40.0, (22, 16.5, 22.0, 1000.0), id="margin-1.1"),
        # the corner case needs 2·L̂(1) = 9 ≤ SLO
        pytest.param(EXACT, 10.0, 8.0, None, id="corner-case-too-slow"),
        pytest.param(EXACT, 0.0, 40.0, None, id="zero-rate"),
    ],
)
def test_residual(
    config: PlanConfig,
    rate_rps: float,
    slo_ms: float,
    expected: tuple[int, float, float, float] | None,
) -> None:
    got = PerfModel(HAND, config).residual("m", 40.0, slo_ms, rate_rps)
    if expected is None:
        assert got is None
        return
    batch, latency, duty, throughput = expected
    assert got is not None
    assert (got.batch, got.latency_ms, got.duty_cycle_ms, got.throughput_rps) == pytest.approx(
        (batch, latency, duty, throughput)
    )
    assert got.occupancy == pytest.approx(latency / duty)


# knee: upper end of the steepest saturated-throughput step -------------------------------------
@pytest.mark.parametrize(
    ("model", "slo_ms", "include_full", "expected"),
    [
        pytest.param("m", 40.0, False, 40.0, id="steepest-20-40"),
        pytest.param("m", 40.0, True, 100.0, id="whole-device-steeper"),
        # SLO 12: T = 166.7, 666.7, 851.1, 1181.4, 1702.1 (b 1, 4, 5, 7, 10);
        # gains 25, 18.4, 33.0, 26.0: the knee is 60
        pytest.param("m", 12.0, False, 60.0, id="slo-12"),
        # SLO 11: 20 % fails (2·6 > 11); T = 545.5, 727.3, 930.2, 1454.5: gains 18.2, 20.3, 26.2
        pytest.param("m", 11.0, False, 80.0, id="smallest-size-unusable"),
        # SLO 8.5: only 80 (2·4.1875) and 100 meet it: the one partial size is the knee
        pytest.param("m", 8.5, False, 80.0, id="single-partial-size"),
        pytest.param("m", 8.5, True, 100.0, id="single-partial-size-with-full"),
        # SLO 8.3: only 100 % (2·4.15 ≤ 8.3)
        pytest.param("m", 8.3, False, 100.0, id="only-the-whole-device"),
        pytest.param("m", 8.0, False, None, id="no-size"),
        # f: T = 1000, 1063.8, 1098.9, 1111.1, ...; 40 -> 50 gains 3.5/% > 3.2/% for 20 -> 40,
        # but its ratio 1.033 is under 1.05: ignored
        pytest.param("f", 80.0, False, 40.0, id="flat-step-ignored"),
        # g: every step under 1.05: the smallest size
        pytest.param("g", 80.0, False, 20.0, id="all-flat"),
        pytest.param("g", 80.0, True, 20.0, id="all-flat-with-full"),
    ],
)
def test_knee(model: str, slo_ms: float, include_full: bool, expected: float | None) -> None:
    perf = PerfModel(HAND, EXACT)
    assert perf.knee(model, slo_ms, SIZES, include_full=include_full) == expected


@pytest.mark.parametrize(
    ("model", "slo_ms", "expected"),
    [
        # 20+80: 3600, 40+60: 4100, 50+50: 4000
        pytest.param("m", 40.0, 4100.0, id="m-60+40"),
        # 20 unusable: 20+80: 1454.5, 40+60: 545.5 + 930.2, 50+50: 1454.5
        pytest.param("m", 11.0, 12000 / 22 + 5000 / 5.375, id="m-slo-11"),
        pytest.param("f", 80.0, 2 * 1000 / 0.91, id="f-50+50"),
        pytest.param("m", 8.0, 0.0, id="nothing-fits"),
    ],
)
def test_best_split_rps(model: str, slo_ms: float, expected: float) -> None:
    assert PerfModel(HAND, EXACT).best_split_rps(model, slo_ms, SIZES) == pytest.approx(expected)


# estimate: saturated gpu-lets of the knee size, then one residual, shrunk ----------------------
WantRow = tuple[float, bool, int, float]  # size, saturated, batch, rate_rps


@pytest.mark.parametrize(
    ("config", "rate_rps", "slo_ms", "expected"),
    [
        pytest.param(EXACT, 1000.0, 40.0, [(40.0, False, 24, 1000.0)], id="one-residual"),
        # at 40 %: b 3, fill 30; at 20 %: L(3) = 10, 10 + 30 ≤ 40: shrunk to 20, b 3 again
        pytest.param(EXACT, 100.0, 40.0, [(20.0, False, 3, 100.0)], id="residual-shrunk"),
        # rate = T_sat exactly is not more than it: a residual at b 32 (20 + 20 ≤ 40)
        pytest.param(EXACT, 1600.0, 40.0, [(40.0, False, 32, 1600.0)], id="rate-equals-tsat"),
        pytest.param(
            EXACT,
            1700.0,
            40.0,
            [(40.0, True, 32, 1600.0), (20.0, False, 3, 100.0)],
            id="saturated-plus-shrunk-residual",
        ),
        # 800 left: 4 + 0.5b + 1.25b ≤ 40, b 20, fill 25; 20 % needs L(20) = 44 > 25: stays 40
        pytest.param(
            EXACT,
            2400.0,
            40.0,
            [(40.0, True, 32, 1600.0), (40.0, False, 20, 800.0)],
            id="saturated-plus-residual",
        ),
        pytest.param(
            EXACT,
            3300.0,
            40.0,
            [(40.0, True, 32, 1600.0), (40.0, True, 32, 1600.0), (20.0, False, 3, 100.0)],
            id="two-saturated",
        ),
        # knee 100: 4 + 0.075b + b ≤ 40 at the cap; at 80 %, 10 + 32 > 40: not shrunk
        pytest.param(
            PlanConfig(latency_margin=1.0, whole_knee=True),
            1000.0,
            40.0,
            [(100.0, False, 32, 1000.0)],
            id="whole-knee",
        ),
        # b 3 at 100 %, fill 30: L(3) at 80, 60, 50, 40, 20 % is 4.56 ... 10, all within 40
        pytest.param(
            PlanConfig(latency_margin=1.0, whole_knee=True),
            100.0,
            40.0,
            [(20.0, False, 3, 100.0)],
            id="shrunk-from-whole-to-20",
        ),
        # best split 4100 < 1.3·5000: whole devices
        pytest.param(
            PlanConfig(latency_margin=1.0, min_split_gain=1.3),
            1000.0,
            40.0,
            [(100.0, False, 32, 1000.0)],
            id="split-gain-too-small",
        ),
        pytest.param(
            PlanConfig(latency_margin=1.0, min_split_gain=0.8),
            1000.0,
            40.0,
            [(40.0, False, 24, 1000.0)],
            id="split-gain-enough",
        ),
        # knee 60 (see test_knee); 100 req/s at SLO 12 is the corner case: b 1, duty 7.725;
        # at 50 %: 4.375 + 10 > 12, not shrunk
        pytest.param(EXACT, 100.0, 12.0, [(60.0, False, 1, 100.0)], id="corner-case-at-knee"),
        pytest.param(EXACT, 100.0, 8.0, [], id="no-size-meets-slo"),
    ],
)
def test_estimate(
    config: PlanConfig, rate_rps: float, slo_ms: float, expected: list[WantRow]
) -> None:
    planner = Planner("gpulet", devices(1), config)
    wants = planner.estimate(demand("a", rate_rps, slo_ms), rate_rps)
    assert [(w.size, w.saturated, w.choice.batch) for w in wants] == [e[:3] for e in expected]
    assert [w.rate_rps for w in wants] == pytest.approx([e[3] for e in expected])


def test_estimate_explains_the_knee() -> None:
    planner = Planner("gpulet", devices(1), EXACT)
    planner.estimate(demand("a", 1700.0, 40.0), 1700.0)
    assert planner.explanation == [
        "a: knee 40 (steepest saturated-throughput gain), saturated batch 32 gives 1600 req/s "
        "(2·L̂ = 40.0 ≤ 40 ms); estimate ['40', '20'] for 1700 req/s"
    ]


def test_no_size_meets_the_slo_is_explained() -> None:
    result = Planner("gpulet", devices(1), EXACT).plan([demand("a", 100.0, 8.0)])
    assert not result.feasible
    assert result.shortfall_rps == {"a": 100.0}
    assert "a: no size meets its 8 ms SLO on hand" in result.explanation
