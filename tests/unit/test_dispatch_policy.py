"""The dispatcher's pure policies: the batching decision, admission and routing weights."""

from __future__ import annotations

import pytest

from router.dispatch.admission import Verdict, admit
from router.dispatch.batching import (
    ADMIT_HEADROOM,
    DISPATCH_SLACK_MS,
    BatchDecision,
    GpuletPlanView,
    ModelTurn,
    Pending,
    admission_finish,
    decide,
)
from router.dispatch.estimates import Learner
from router.dispatch.weights import RouteLoad, pick, ranked

pytestmark = pytest.mark.timeout(30)

# L̂(b) = 10 + 5·b ms for b = 1..8; batch size 4; duty cycle 40 ms.
A = ModelTurn("a", 4, tuple(10.0 + 5.0 * b for b in range(1, 9)))
B = ModelTurn("b", 2, tuple(2.0 * b for b in range(1, 9)))
ONE = GpuletPlanView(duty_cycle_ms=40.0, models=(A,))
SHARED = GpuletPlanView(duty_cycle_ms=40.0, models=(A, B))


def req(rid: str, arrived: float, deadline: float, model: str = "a", items: int = 1) -> Pending:
    return Pending(rid, model, items, arrived, deadline)


@pytest.mark.parametrize(
    ("queue", "now", "busy_until", "expected"),
    [
        pytest.param([], 0.0, 0.0, BatchDecision(None, (), (), None, 0), id="empty"),
        # One request, window not over (arrived 0 + duty 40), deadline far: wait until 40.
        pytest.param([req("r1", 0, 500)], 5.0, 0.0,
                     BatchDecision(None, (), (), 40.0, 0), id="wait-for-window"),
        # The window is over: send what there is.
        pytest.param([req("r1", 0, 500)], 40.0, 0.0,
                     BatchDecision("a", ("r1",), (), 40.0, 0), id="window-over"),
        # Full batch (4 items): send at once.
        pytest.param([req(f"r{i}", i, 500) for i in range(4)], 4.0, 0.0,
                     BatchDecision("a", ("r0", "r1", "r2", "r3"), (), 4.0, 0), id="full"),
        # More waiting than fit: the first 4 go now.
        pytest.param([req(f"r{i}", i, 500) for i in range(6)], 6.0, 0.0,
                     BatchDecision("a", ("r0", "r1", "r2", "r3"), (), 6.0, 0), id="overfull"),
        # Deadline sooner than the window: latest start = 50 - L̂(1)=15 - slack.
        pytest.param([req("r1", 0, 50)], 5.0, 0.0,
                     BatchDecision(None, (), (), 35.0 - DISPATCH_SLACK_MS, 0), id="deadline-wake"),
        pytest.param([req("r1", 0, 50)], 34.5, 0.0,
                     BatchDecision("a", ("r1",), (), 34.5, 0), id="deadline-send"),
        # Cannot make it even alone: 30 + L̂(1) = 45 > 40: dropped at once, never run.
        pytest.param([req("late", 0, 40), req("ok", 1, 500)], 30.0, 0.0,
                     BatchDecision(None, (), ("late",), 41.0, 0), id="eager-drop"),
        # Busy until 60: the drop counts from when it is free (60 + 15 > 70); r2 waits for its
        # window (1 + 40), not for the gpu-let: a batch may queue behind a running one.
        pytest.param([req("r1", 0, 70), req("r2", 1, 500)], 10.0, 60.0,
                     BatchDecision(None, (), ("r1",), 41.0, 0), id="busy-drop-and-wait"),
        # Busy, but the batch is full: it goes now, to queue at the worker.
        pytest.param([req(f"r{i}", 0, 500) for i in range(4)], 10.0, 60.0,
                     BatchDecision("a", ("r0", "r1", "r2", "r3"), (), 10.0, 0), id="busy-full"),
        # Unknown model on this gpu-let: dropped, not stuck.
        pytest.param([req("x", 0, 500, model="zzz")], 0.0, 0.0,
                     BatchDecision(None, (), ("x",), None, 0), id="unknown-model"),
    ],
)  # fmt: skip
def test_decide_single_model(
    queue: list[Pending], now: float, busy_until: float, expected: BatchDecision
) -> None:
    assert decide(queue, now, ONE, 0, busy_until) == expected


def test_a_request_is_dropped_at_once_when_the_queue_ahead_makes_it_late() -> None:
    # Batch 4, L̂(4) = 30: the ninth request waits for two full batches (60) and then runs
    # alone (L̂(1) = 15): 75 > 70. The first eight fit (30 and 60 <= 70): they stay.
    queue = [req(f"r{i}", i * 0.1, 70) for i in range(9)]
    decision = decide(queue, 1.0, ONE)
    assert decision.drop == ("r8",)
    assert decision.dispatch == ("r0", "r1", "r2", "r3")
    # Another model's queued work counts too on a shared gpu-let: b1..b4 ahead (two batches
    # of 2, L̂(2) = 4 each) push "a-late" from 15 to 23 > 20.
    shared = [*(req(f"b{i}", i * 0.1, 500, model="b") for i in range(4)), req("a-late", 1, 20)]
    assert decide(shared, 1.0, SHARED).drop == ("a-late",)


def learned(turn: ModelTurn, scale: float, hop_ms: float = 0.0) -> ModelTurn:
    """`turn` after many batches that ran `scale` x its prior, with `hop_ms` round trip on top."""
    learner = Learner(turn.latency_ms, turn.batch_size)
    for i in range(64):
        items = 1 + i % len(turn.latency_ms)
        compute = scale * turn.latency_ms[items - 1]
        learner.record(items, compute, compute + hop_ms, now_ms=float(i))
    return ModelTurn(turn.model, turn.batch_size, turn.latency_ms, learner.estimate)


def test_learned_latency_replaces_the_prior_in_every_prediction() -> None:
    # At 30 ms with deadline 50: L̂(1) = 15 fits as profiled; learned at 1.5x (~22.5) it does not.
    slow = GpuletPlanView(40.0, (learned(A, 1.5),))
    queue = [req("r1", 0, 50)]
    assert decide(queue, 30.0, ONE, 0, 0.0).drop == ()
    assert decide(queue, 30.0, slow, 0, 0.0).drop == ("r1",)
    # The latest start moves earlier by the same amount: 50 - ~22.5 - slack (the prior still
    # holds the fit back by a few per cent).
    wake = decide(queue, 5.0, slow, 0, 0.0).wake_at_ms
    assert wake == pytest.approx(50.0 - 22.5 - DISPATCH_SLACK_MS, rel=0.07)
    # Faster than profiled counts too: nothing clamps a learned figure at the prior.
    fast = GpuletPlanView(40.0, (learned(A, 0.5),))
    assert fast.models[0].predict(1) < 0.6 * A.latency_ms[0]
    assert decide([req("r1", 0, 50)], 40.0, fast, 0, 0.0).drop == ()


def test_batch_shrinks_to_the_prefix_whose_deadlines_hold() -> None:
    # r0 has a tight deadline: with 3 items L̂ = 25 > 22, with 2 items L̂ = 20 ≤ 22.
    queue = [req("r0", 0, 22), req("r1", 0, 500), req("r2", 0, 500)]
    decision = decide(queue, 0.0, ONE)
    assert decision.dispatch == ("r0", "r1")
    assert decision.drop == ()


def test_multi_item_requests_count_items_not_requests() -> None:
    queue = [req("big", 0, 500, items=3), req("small", 1, 500, items=2)]
    decision = decide(queue, 1.0, ONE)
    assert decision.dispatch == ("big",)  # 3 + 2 > 4: the second waits for the next batch


def test_shared_gpulet_models_take_turns() -> None:
    queue = [req("a1", 0, 500), req("b1", 0, 500, model="b")]
    first = decide(queue, 40.0, SHARED, turn=0)
    assert (first.model, first.dispatch, first.next_turn) == ("a", ("a1",), 1)
    second = decide([q for q in queue if q.request_id not in first.dispatch], 40.0, SHARED,
                    turn=first.next_turn)  # fmt: skip
    assert (second.model, second.dispatch, second.next_turn) == ("b", ("b1",), 0)
    # With b's turn first, b goes before a even though a arrived at the same time.
    assert decide(queue, 40.0, SHARED, turn=1).model == "b"


def test_work_conserving_an_idle_gpulet_sends_a_lone_request_at_once() -> None:
    queue = [req("r1", 0, 500)]
    # Duty-cycle rule: it waits for the window (0 + 40).
    assert decide(queue, 1.0, ONE).wake_at_ms == 40.0
    # Work-conserving: nothing running, so it goes now.
    sent = decide(queue, 1.0, ONE, running=0, work_conserving=True)
    assert (sent.model, sent.dispatch) == ("a", ("r1",))


def test_work_conserving_a_busy_gpulet_lets_the_batch_grow_until_the_running_one_ends() -> None:
    hop = 2.0
    turn = learned(A, 1.0, hop_ms=hop)
    view = GpuletPlanView(40.0, (turn,))
    queue = [req("r1", 0, 500), req("r2", 1, 500)]
    # One batch running until 30: wait until 30 - hop(2 items), not for the window (40).
    waiting = decide(queue, 5.0, view, 0, 30.0, running=1, work_conserving=True)
    assert waiting.model is None
    assert waiting.wake_at_ms == pytest.approx(30.0 - turn.hop_ms(2))
    due = decide(queue, 30.0 - turn.hop_ms(2), view, 0, 30.0, running=1, work_conserving=True)
    assert due.dispatch == ("r1", "r2")
    # A full batch still goes at once, to queue at the worker behind the running one.
    full = [req(f"r{i}", 0, 500) for i in range(4)]
    assert decide(full, 5.0, view, 0, 30.0, running=1, work_conserving=True).dispatch == (
        "r0", "r1", "r2", "r3")
    # The duty cycle still bounds the wait when the running batch overruns its prediction.
    late = decide(queue, 40.0, view, 0, 90.0, running=1, work_conserving=True)
    assert late.dispatch == ("r1", "r2")


def test_a_worker_with_enough_batches_gets_no_more_but_drops_still_happen() -> None:
    full = [req(f"r{i}", 0, 500) for i in range(4)]
    held = decide([*full, req("late", 0, 20)], 10.0, ONE, 0, 10.0, may_send=False)
    assert (held.model, held.dispatch, held.drop) == (None, (), ("late",))
    assert decide(full, 10.0, ONE, 0, 10.0).dispatch == ("r0", "r1", "r2", "r3")


@pytest.mark.parametrize(
    ("queued", "budget", "start", "expected"),
    [
        # Idle: its own batch counts as full (L̂(4) = 30), as later arrivals fill it.
        pytest.param({}, float("inf"), 0.0, 30.0, id="own-batch-full"),
        # A 20 ms SLO lets its batch grow only to 1 item (L̂(1) x 1.1 = 16.5 <= 20).
        pytest.param({}, 20.0, 0.0, 15.0, id="tight-slo-small-batch"),
        # Five items ahead: one full batch (30), then its own, full (30).
        pytest.param({"a": 5}, float("inf"), 0.0, 60.0, id="queue-ahead"),
        # The other model's queued items count too: one batch of 2 (L̂ = 4).
        pytest.param({"b": 2}, float("inf"), 0.0, 34.0, id="other-model-ahead"),
        # Busy until 100: everything starts then.
        pytest.param({}, float("inf"), 100.0, 30.0, id="busy"),
    ],
)  # fmt: skip
def test_admission_predicts_the_finish_behind_the_queue_with_headroom(
    queued: dict[str, int], budget: float, start: float, expected: float
) -> None:
    prediction = admission_finish(SHARED, queued, req("new", 0, 500), 0.0, start, budget)
    assert prediction.finish_ms == pytest.approx(start + expected * (1 + ADMIT_HEADROOM))
    assert prediction.wait_ms == start
    assert prediction.ahead_ms + prediction.own_ms == pytest.approx(
        expected * (1 + ADMIT_HEADROOM))
    # Learned slower (2x): the work stretches, not the start.
    slow_view = GpuletPlanView(40.0, (learned(A, 2.0), B))
    slow = admission_finish(slow_view, queued, req("new", 0, 500), 0.0, start)
    assert slow.finish_ms > start + 1.8 * expected
    assert slow.factor == pytest.approx(2.0, rel=0.1)


def test_an_idle_gpulet_admits_a_request_whose_profiled_latency_fits_its_slo() -> None:
    # L̂(1) = 55 ms, SLO 60 ms: it fits alone, though not with the headroom (60.5) nor at the
    # planned batch (L̂(4) = 100).
    turn = ModelTurn("m", 4, (55.0, 70.0, 85.0, 100.0))
    view = GpuletPlanView(200.0, (turn,))
    request = Pending("r", "m", 1, 0.0, 120.0)
    alone = admission_finish(view, {}, request, 0.0, 0.0, 60.0, idle=True, work_conserving=True)
    assert alone.finish_ms == pytest.approx(55.0) and alone.idle
    # The duty-cycle rule holds it for the window, so it judges with headroom: refused.
    held = admission_finish(view, {}, request, 0.0, 0.0, 60.0, idle=True)
    assert held.finish_ms > 60.0


def test_admission_of_a_model_the_gpulet_does_not_serve_is_never() -> None:
    missing = admission_finish(ONE, {}, req("x", 0, 500, model="zzz"), 0.0)
    assert missing.finish_ms == float("inf")


def test_ranked_routes_start_with_the_pick() -> None:
    routes = [RouteLoad("g1", 10.0, 9), RouteLoad("g2", 10.0, 0), RouteLoad("g3", 20.0, 9)]
    assert ranked(routes) == ["g2", "g3", "g1"]
    assert pick(routes) == "g2"


def test_prediction_past_the_table_is_linear_not_optimistic() -> None:
    assert A.predict(8) == 50.0
    assert A.predict(16) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("slo", "best", "held", "verdict", "code"),
    [
        (100.0, 20.0, 0, Verdict.OK, None),
        (100.0, None, 0, Verdict.OK, None),  # no profile: nothing to judge by
        (10.0, 20.0, 0, Verdict.NEVER, "slo_unattainable"),
        (100.0, 20.0, 60, Verdict.LATER, "overloaded"),  # 60 held + 8 > 64 bytes
        (100.0, 20.0, 56, Verdict.OK, None),  # 56 + 8 fits
        (10.0, 20.0, 60, Verdict.NEVER, "slo_unattainable"),  # NEVER wins over LATER
    ],
)
def test_admission(
    slo: float, best: float | None, held: int, verdict: Verdict, code: str | None
) -> None:
    result = admit("m", slo, best, held, 8, 64, retry_after_s=1.0)
    assert result.verdict is verdict
    if code is None:
        assert result.error is None
    else:
        assert result.error is not None and result.error.code == code
        body = result.error.to_body()["error"]
        if code == "slo_unattainable":
            assert result.error.status == 422 and body["best_achievable_ms"] == best
        else:
            assert result.error.status == 503 and body["limit"] == 64
            assert body["held_bytes"] == held and body["request_bytes"] == 8
            assert result.error.retry_after_s == 1.0


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([RouteLoad("g1", 100, 0), RouteLoad("g2", 100, 0)], "g1"),  # tie: plan order
        ([RouteLoad("g1", 100, 5), RouteLoad("g2", 100, 0)], "g2"),
        # g2 planned 3x the rate: it may hold ~3x the work before g1 is preferred.
        ([RouteLoad("g1", 100, 1), RouteLoad("g2", 300, 4)], "g2"),
        ([RouteLoad("g1", 100, 1), RouteLoad("g2", 300, 6)], "g1"),
        ([RouteLoad("g1", 0, 0), RouteLoad("g2", 10, 0)], "g2"),
    ],
)
def test_pick_weights_by_planned_throughput(routes: list[RouteLoad], expected: str) -> None:
    assert pick(routes) == expected


def test_pick_shares_in_proportion_over_time() -> None:
    planned = {"g1": 100.0, "g2": 300.0}
    outstanding = {"g1": 0, "g2": 0}
    sent = {"g1": 0, "g2": 0}
    for _ in range(400):  # nothing completes: the shares follow planned rates alone
        chosen = pick([RouteLoad(g, planned[g], outstanding[g]) for g in planned])
        outstanding[chosen] += 1
        sent[chosen] += 1
    assert sent == {"g1": 100, "g2": 300}


def test_a_request_larger_than_the_byte_limit_alone_is_still_admitted() -> None:
    # The body limit (413) bounds one request; the byte limit bounds what piles up behind it.
    assert admit("m", 100.0, None, 0, 1 << 20, 64, retry_after_s=1.0).verdict is Verdict.OK


def test_pick_needs_a_route() -> None:
    with pytest.raises(ValueError):
        pick([])


def test_where_the_hop_outweighs_the_compute_the_round_trips_set_the_pace() -> None:
    # A tiny model: 0.1 ms of compute a batch, 5 ms of hop. Two batches in flight at a time,
    # so a backlog drains a batch every (0.1 + 5) / 2 ms, not every 0.1 ms.
    tiny = learned(ModelTurn("t", 4, tuple(0.1 for _ in range(8))), 1.0, hop_ms=5.0)
    view = GpuletPlanView(10.0, (tiny,))
    assert tiny.period_ms(4) == pytest.approx((tiny.predict(4) + tiny.hop_ms(4)) / 2)
    prediction = admission_finish(view, {"t": 40}, req("new", 0, 5_000, model="t"), 0.0, 0.0)
    # Ten full batches ahead at the round trips' pace, then its own batch's round trip.
    assert prediction.ahead_ms == pytest.approx(10 * tiny.period_ms(4) * (1 + ADMIT_HEADROOM),
                                                rel=0.01)  # fmt: skip
    assert prediction.ahead_ms > 20.0


def test_an_unattainable_slo_names_a_tiny_best_latency_in_figures_that_show() -> None:
    # noop runs in microseconds: "below 0.0 ms" would say nothing.
    result = admit("noop", 0.001, 0.0067, 0, 8, 64, retry_after_s=1.0)
    assert result.error is not None and "below 0.0067 ms" in result.error.message


def test_a_backlog_runs_in_larger_batches_than_planned_where_deadlines_allow() -> None:
    # Planned batch 4, but the profile knows batches up to 8: ten waiting requests go out
    # eight at a time (L̂(8) = 50 ms fits their 500 ms deadlines), not four.
    grown = ModelTurn("a", 4, A.latency_ms, grow_to=8)
    view = GpuletPlanView(40.0, (grown,))
    queue = [req(f"r{i}", i * 0.1, 500) for i in range(10)]
    assert decide(queue, 1.0, view).dispatch == tuple(f"r{i}" for i in range(8))
    # A tight deadline still cuts the batch: r0 must be answered by 41 ms (L̂(6) = 40).
    tight = [req("r0", 0, 41), *queue[1:]]
    assert decide(tight, 1.0, view).dispatch == tuple(f"r{i}" for i in range(6))
    # Fewer than the planned size waiting: nothing changes (the window rule holds them).
    assert decide(queue[:3], 1.0, view).model is None


def test_a_batch_grows_past_the_planned_size_only_while_every_request_makes_its_slo() -> None:
    # Deadlines (SLO x 2) are far, but the SLOs end at 46 ms: L̂(6) = 40 fits, L̂(7) = 45 fits,
    # L̂(8) = 50 does not. Up to the planned 4 only deadlines count (a request already
    # admitted may run late rather than be dropped); past it, nobody is made late.
    grown = ModelTurn("a", 4, A.latency_ms, grow_to=8)
    view = GpuletPlanView(40.0, (grown,))
    queue = [Pending(f"r{i}", "a", 1, i * 0.1, 500.0, due_ms=46.0) for i in range(10)]
    assert decide(queue, 1.0, view).dispatch == tuple(f"r{i}" for i in range(7))
    late = [Pending(f"r{i}", "a", 1, i * 0.1, 500.0, due_ms=20.0) for i in range(10)]
    assert decide(late, 1.0, view).dispatch == tuple(f"r{i}" for i in range(4))
