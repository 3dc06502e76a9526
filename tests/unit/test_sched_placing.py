"""Placing gpu-lets: best fit and splits, memory, grow, temporal sharing, interference veto."""

from __future__ import annotations

import pytest

from common.interference import InterferenceModel, NoInterference
from common.profiles import PROCESS_OVERHEAD_MB
from router.scheduling.elastic import Planner
from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import (
    config_for,
    plan,
)
from router.scheduling.state import DeviceState, Slot, Tenant, evaluate_device
from router.scheduling.types import ModelDemand, Plan, PlanConfig
from router.scheduling.want import Want
from tests.support.sched_hand import (
    EXACT,
    HAND,
    MODEL_MB,
    FixedInterference,
    demand,
    devices,
    gpulets_of,
    layout,
)

pytestmark = pytest.mark.timeout(120)


# placing: best fit, splitting --------------------------------------------------------------
def _saturated_want(planner: Planner, size: float, slo_ms: float) -> Want:
    choice = planner.perf.saturated("m", size, slo_ms)
    assert choice is not None
    return Want(size, choice, choice.throughput_rps, True)


def _residual_want(planner: Planner, size: float, slo_ms: float, rate_rps: float) -> Want:
    choice = planner.perf.residual("m", size, slo_ms, rate_rps)
    assert choice is not None
    return Want(size, choice, rate_rps, False)


def test_placing_on_an_empty_device_splits_it() -> None:
    planner = Planner("gpulet", devices(1), EXACT)
    taken = planner.place(demand("a", 1000.0, 40.0), _residual_want(planner, 40.0, 40.0, 1000.0))
    assert taken == pytest.approx(1000.0)
    assert layout(planner) == [[(40.0, ("a",)), (60.0, ())]]


@pytest.mark.parametrize(
    ("max_gpulets", "second_size", "expected_layout", "batch", "rate_rps"),
    [
        # (40, 60) already holds two gpu-lets: the 20 % gpu-let takes the whole 60 % slot, its
        # saturated batch re-derived there (b 32, T 2500 instead of b 8, T 400)
        pytest.param(
            2, 20.0, [(40.0, ("a",)), (60.0, ("b",))], 32, 2500.0, id="third-gpulet-forbidden"
        ),
        pytest.param(
            3, 20.0, [(40.0, ("a",)), (20.0, ("b",)), (40.0, ())], 8, 400.0, id="three-allowed"
        ),
        # 60 - 50 = 10 is not an allowed size: not split, the whole 60 % used (b 32, T 2500)
        pytest.param(3, 50.0, [(40.0, ("a",)), (60.0, ("b",))], 32, 2500.0, id="rest-not-a-size"),
    ],
)
def test_splitting_limits(
    max_gpulets: int,
    second_size: float,
    expected_layout: list[tuple[float, tuple[str, ...]]],
    batch: int,
    rate_rps: float,
) -> None:
    config = PlanConfig(latency_margin=1.0, max_gpulets_per_device=max_gpulets)
    planner = Planner("gpulet", devices(1), config)
    planner.place(demand("a", 1000.0, 40.0), _residual_want(planner, 40.0, 40.0, 1000.0))
    taken = planner.place(demand("b", 9000.0, 40.0), _saturated_want(planner, second_size, 40.0))
    assert taken == pytest.approx(rate_rps)
    assert layout(planner) == [expected_layout]
    tenant = next(t for s in planner.states[0].slots for t in s.tenants if t.demand.name == "b")
    assert (tenant.batch, tenant.saturated) == (batch, True)


@pytest.mark.parametrize(
    ("size", "expected_layout"),
    [
        # exact fit on d0 (leftover 0) before splitting d1 (also leftover 0): scan order
        pytest.param(60.0, [[(40.0, ("a",)), (60.0, ("b",))], [(100.0, ())]], id="exact-fit-first"),
        # d0/60 would leave 10; a whole device counts as leftover 0 and is split
        pytest.param(
            50.0,
            [[(40.0, ("a",)), (60.0, ())], [(50.0, ("b",)), (50.0, ())]],
            id="whole-device-before-bigger-slot",
        ),
        pytest.param(
            20.0,
            [[(40.0, ("a",)), (60.0, ())], [(20.0, ("b",)), (80.0, ())]],
            id="whole-device-before-partial-slot",
        ),
        pytest.param(
            80.0,
            [[(40.0, ("a",)), (60.0, ())], [(80.0, ("b",)), (20.0, ())]],
            id="only-the-whole-device-fits",
        ),
    ],
)
def test_best_fit(size: float, expected_layout: list[list[tuple[float, tuple[str, ...]]]]) -> None:
    planner = Planner("gpulet", devices(2), EXACT)
    planner.place(demand("a", 1000.0, 40.0), _residual_want(planner, 40.0, 40.0, 1000.0))
    assert planner.place(demand("b", 9000.0, 40.0), _saturated_want(planner, size, 40.0)) > 0
    assert layout(planner) == expected_layout


def test_memory_rejects_a_second_gpulet() -> None:
    # 0.2 · 24000 = 4800 MB: one gpu-let (1230 + 1500 = 2730 MB) fits, a second (5460) does not
    config = PlanConfig(latency_margin=1.0, memory_fraction=0.2)
    planner = Planner("gpulet", devices(1), config)
    planner.place(demand("a", 1000.0, 40.0), _residual_want(planner, 40.0, 40.0, 1000.0))
    taken = planner.place(demand("b", 9000.0, 40.0), _saturated_want(planner, 60.0, 40.0))
    assert taken == 0.0
    assert layout(planner) == [[(40.0, ("a",)), (60.0, ())]]
    why = planner.explanation[-1]
    assert why.startswith("b: no slot of ≥60 for 2500 req/s; d0: memory"), why
    assert why.endswith("memory 2730 + 2730 MB > 4800 MB"), why


# grow: a leftover goes into the model's own residual gpu-let --------------------------------
def _a_and_saturated_b(config: PlanConfig = EXACT) -> Planner:
    """One device: a (800 req/s, SLO 40) residual at 40 % (b 20, L 14, fill 25) and b, whose
    2500 req/s saturate the other 60 % (T_sat(60) = 2500, b 32)."""
    planner = Planner("gpulet", devices(1), config)
    result = planner.plan([demand("a", 800.0, 40.0), demand("b", 2500.0, 40.0)])
    assert result.feasible
    assert gpulets_of(result) == [("d0", 40.0, ("a",)), ("d0", 60.0, ("b",))]
    return planner


@pytest.mark.parametrize(
    ("extra_rps", "planned_rps", "batch", "duty_ms"),
    [
        # 900 req/s: 4 + 0.5b + 1000b/900 ≤ 40: b 22, L 15, fill 24.4
        pytest.param(100.0, 900.0, 22, 22000 / 900, id="grows-in-place"),
        # 1700 req/s is beyond T_sat(40) = 1600: refused, a keeps b 20 at 800 req/s
        pytest.param(900.0, 800.0, 20, 25.0, id="too-much-refused"),
    ],
)
def test_leftover_grows_own_residual(
    extra_rps: float, planned_rps: float, batch: int, duty_ms: float
) -> None:
    planner = _a_and_saturated_b()
    a = demand("a", 800.0, 40.0)
    planner.add_model(a, extra_rps)
    assert planner.planned(a) == pytest.approx(planned_rps)
    assert layout(planner) == [[(40.0, ("a",)), (60.0, ("b",))]]  # no new gpu-let
    slot = planner.states[0].slots[0]
    assert (slot.tenants[0].batch, slot.duty_ms) == pytest.approx((batch, duty_ms))


# temporal sharing: one batch per model per duty cycle, Σ L̂ + d ≤ every SLO --------------------
TEMPORAL = config_for("temporal", EXACT)


@pytest.mark.parametrize(
    ("a_slo_ms", "b", "config", "joined"),
    [
        # a at 100 %: b 3, L 4.225, d 30. b joins at b 6 (d 30, L 4.45): Σ L̂ + d = 38.675 ≤ 40
        pytest.param(40.0, demand("b", 200.0, 40.0), TEMPORAL, True, id="joins"),
        pytest.param(40.0, demand("b", 200.0, 38.0), TEMPORAL, False, id="breaks-own-slo"),
        pytest.param(38.5, demand("b", 200.0, 60.0), TEMPORAL, False, id="breaks-neighbour-slo"),
        # b at 4000 req/s: b 32, d 8, L 6.4 (6.4/8 < 1 - 0.14 spare); a then runs b 1 (4.075) in
        # each 8 ms cycle: 10.475 ms of batches in an 8 ms cycle (SLOs alone would hold: 18.5)
        pytest.param(40.0, demand("b", 4000.0, 100.0), TEMPORAL, False, id="breaks-occupancy"),
        pytest.param(
            40.0,
            demand("b", 200.0, 40.0),
            config_for("temporal", PlanConfig(latency_margin=1.0, max_models_per_gpulet=1)),
            False,
            id="one-model-per-gpulet",
        ),
    ],
)
def test_temporal_share(a_slo_ms: float, b: ModelDemand, config: PlanConfig, joined: bool) -> None:
    a = demand("a", 100.0, a_slo_ms)
    result = Planner("temporal", devices(1), config).plan([a, b])
    assert result.feasible is joined
    (gpulet,) = result.gpulets
    assert gpulet.size == 100.0
    if joined:
        assert [(m.name, m.batch) for m in gpulet.models] == [("a", 3), ("b", 6)]
        assert gpulet.duty_cycle_ms == pytest.approx(30.0)
        assert gpulet.occupancy == pytest.approx((4.225 + 4.45) / 30)
        for m in gpulet.models:
            assert m.latency_ms == pytest.approx(38.675)
            assert m.latency_ms <= m.slo_ms
    else:
        assert result.shortfall_rps == {"b": b.rate_rps}
        # a is left as it was: b 3, d 30
        assert [(m.name, m.batch) for m in gpulet.models] == [("a", 3)]
        assert gpulet.duty_cycle_ms == pytest.approx(30.0)
        assert gpulet.models[0].latency_ms == pytest.approx(34.225)


@pytest.mark.parametrize("b_rate_rps", [0.5, 10.0, 33.0])
def test_a_model_too_slow_to_fill_a_batch_per_cycle_joins_with_batch_1(b_rate_rps: float) -> None:
    """a at 100 req/s: b 3, d 30. b at under 1000/30 req/s fills no batch in 30 ms: it runs
    batch 1 in each of a's cycles (L̂ 4.075), serving more than it asks."""
    a, b = demand("a", 100.0, 40.0), demand("b", b_rate_rps, 40.0)
    result = Planner("temporal", devices(1), TEMPORAL).plan([a, b])
    assert result.feasible
    (gpulet,) = result.gpulets
    assert sorted((m.name, m.batch) for m in gpulet.models) == [("a", 3), ("b", 1)]
    assert gpulet.duty_cycle_ms == pytest.approx(30.0)
    assert all(m.latency_ms <= m.slo_ms for m in gpulet.models)


def test_temporal_share_reason_is_the_duty_cycle() -> None:
    """The occupancy row above fails on occupancy, not on an SLO: Σ L̂ > d is reported."""
    perf = PerfModel(HAND, EXACT)
    state = DeviceState(devices(1)[0], [Slot(100.0, duty_ms=8.0)])
    slot = state.slots[0]
    slot.tenants = [
        Tenant(demand("a", 100.0, 40.0), 1, 100.0, False),
        Tenant(demand("b", 4000.0, 100.0), 32, 4000.0, False),
    ]
    problem = evaluate_device(state, perf, NoInterference())
    assert problem == ("d0/100: time-shared batches take 10.5 ms, more than the 8.0 ms duty cycle")


# interference veto and the 85 % retry ----------------------------------------------------------
def _veto_plan(interference: InterferenceModel, config: PlanConfig = EXACT) -> Plan:
    """a (100 req/s, SLO 12): knee 60, corner case b 1, L 4.275, d 7.725 = 12 - 4.275.
    b (1000 req/s, SLO 40): residual at 40 %, b 24, d 24. With a neighbour slowing a by 2,
    2·L̂(1) = 17.1 > 12: no batch of a meets its SLO, so b's placement must be refused."""
    planner = Planner("gpulet+int", devices(1), config, interference)
    return planner.plan([demand("a", 100.0, 12.0), demand("b", 1000.0, 40.0)])


@pytest.mark.parametrize(
    ("interference", "config", "feasible", "slowdown"),
    [
        pytest.param(FixedInterference(2.0), EXACT, False, None, id="alpha-2-vetoed"),
        # α 1.1: a's corner case still holds (2·4.7025 ≤ 12), b: 4.4 + 1.55b ≤ 40, b 22
        pytest.param(FixedInterference(1.1), EXACT, True, 1.1, id="alpha-1.1-accepted"),
        pytest.param(NoInterference(), EXACT, True, 1.0, id="no-interference"),
        pytest.param(
            FixedInterference(2.0),
            PlanConfig(latency_margin=1.0, interference=False),
            True,
            1.0,
            id="interference-off",
        ),
    ],
)
def test_interference_veto(
    interference: InterferenceModel, config: PlanConfig, feasible: bool, slowdown: float | None
) -> None:
    result = _veto_plan(interference, config)
    assert result.feasible is feasible
    if feasible:
        assert gpulets_of(result) == [("d0", 60.0, ("a",)), ("d0", 40.0, ("b",))]
        assert [g.slowdown for g in result.gpulets] == [pytest.approx(slowdown)] * 2
        a_gpulet = result.gpulets[0]
        assert a_gpulet.models[0].latency_ms == pytest.approx(12.0)  # corner case: L̂ + d = SLO
        return
    assert gpulets_of(result) == [("d0", 60.0, ("a",))]
    assert result.shortfall_rps == {"b": 1000.0}
    assert "b: no slot of ≥40 for 1000 req/s; d0: d0/60: a at 100 req/s cannot meet 12 ms" in (
        result.explanation
    )


@pytest.mark.parametrize(
    ("config", "retried"),
    [
        pytest.param(EXACT, True, id="interference-on"),
        pytest.param(PlanConfig(latency_margin=1.0, retry_threshold=0.0), False, id="threshold-0"),
        pytest.param(PlanConfig(latency_margin=1.0, interference=False), False, id="off"),
    ],
)
def test_retry_below_85_percent(config: PlanConfig, retried: bool) -> None:
    result = _veto_plan(FixedInterference(2.0), config)
    line = "b: planned 0 of 1000 req/s (< 85%); re-placed once"
    assert (line in result.explanation) is retried
    # a met its demand: it is never re-placed
    assert not any(e.startswith("a: planned") for e in result.explanation)


# interference and memory in the fallbacks ----------------------------------------------------
def test_neighbour_interference_keeps_a_residual_within_its_slo() -> None:
    """a (1500 req/s, SLO 40) alone at 40 %: b 30, L 19, fill 20, worst 39. A neighbour slows it
    by 1.1: b 29 would give L̂ 20.35 > fill 19.3, so duty = L̂ and the worst case 40.7 ms; the
    residual rule (L̂ + max(fill, L̂) ≤ SLO) keeps b 28: L̂ 19.8 > fill 18.7, worst 2·19.8 = 39.6.
    (The original's L̂ + fill ≤ SLO alone accepted b 29.)"""
    perf = PerfModel(HAND, EXACT)
    state = DeviceState(devices(1)[0], [Slot(40.0), Slot(60.0)])
    a = Tenant(demand("a", 1500.0, 40.0), 30, 1500.0, False)
    state.slots[0].tenants.append(a)
    state.slots[1].tenants.append(Tenant(demand("b", 1000.0, 80.0), 32, 1000.0, False))
    assert evaluate_device(state, perf, FixedInterference(1.1)) is None
    assert (a.batch, a.alpha, a.latency_ms) == pytest.approx((28, 1.1, 19.8))
    assert state.slots[0].duty_ms == pytest.approx(19.8)
    assert a.rate_rps == pytest.approx(28000 / 19.8)  # less than asked: the 85 % rule's business
    assert state.slots[0].worst_latency_ms(a) == pytest.approx(39.6)


def test_temporal_sharing_respects_memory() -> None:
    """0.25 · 24000 = 6000 MB. a (100 req/s, SLO 200) takes 40 %, b (1000 req/s, SLO 40) the
    other 60 % (2 · 2730 = 5460 MB fits). c (100 req/s, SLO 500) finds no free slot; joining
    either gpu-let would need 2 · 1230 + 3 · 1500 = 6960 MB > 6000, so c stays unplaced. With the
    default 0.9 it joins b's gpu-let."""
    demands = [demand("a", 100.0, 200.0), demand("b", 1000.0, 40.0), demand("c", 100.0, 500.0)]
    tight = plan(
        "gpulet", demands, devices(1), PlanConfig(latency_margin=1.0, memory_fraction=0.25)
    )
    used_mb = sum(PROCESS_OVERHEAD_MB + MODEL_MB * len(g.models) for g in tight.gpulets)
    assert used_mb <= 0.25 * HAND.memory_mb, gpulets_of(tight)
    assert tight.shortfall_rps == {"c": 100.0}
    roomy = plan("gpulet", demands, devices(1), EXACT)
    assert roomy.feasible
    # c has no gpu-let of its own: it time-shares one (which one depends on the policy variant
    # the portfolio keeps).
    shared = [models for _, _, models in gpulets_of(roomy) if "c" in models]
    assert len(shared) == 1 and len(shared[0]) == 2, gpulets_of(roomy)
