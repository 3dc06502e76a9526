"""The batching decision for one gpu-let (pure): what to send now, what to drop, when to look again.

`decide(queue, now_ms, plan, turn, busy_until_ms, ...)` sees the queued requests and the gpu-let's
plan (per model: planned batch size and the learned latency of a batch, estimates.py; the duty
cycle) and returns:
    1. drops: requests that cannot meet their deadline behind the work queued before them:
       start + L̂(the full batches of every model ahead of it) + L̂(its own batch) > deadline
       (eager deadline drop: answered 504 now, never run);
    2. a batch to send now. Work-conserving (the default): a gpu-let with nothing running sends
       what is queued at once; while it runs a batch, the next one grows and goes when the
       running one is about to end (its predicted end less the next batch's hop), so the worker
       never idles and never holds a batch fixed long before it runs. Always also: when the
       model's batch is full, when the oldest request has waited a whole duty cycle (the
       planner's capacity model and the most a request waits, never a floor), or when waiting
       any longer would make the oldest late: start + L̂(batch) ≥ its deadline − slack. With
       `work_conserving=False` only these three (the duty-cycle rule the plan assumes). The
       caller keeps the worker's own queue short (`may_send`): a batch formed long before it
       runs is cut small by its deadlines, and small batches lose throughput exactly when the
       gpu-let is overloaded. The batch is the longest FIFO prefix within the planned batch
       size whose every request still meets its deadline;
    3. otherwise the time to decide again.
Models sharing a gpu-let take turns: from `turn` on, the first model with a batch to send goes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.dispatch.estimates import Estimate, Learner

# Decide this much before the last moment: the agent hop and the worker wake-up take time.
DISPATCH_SLACK_MS = 1.0
# Admission asks this much more of a new request than the queue asks of those it holds, when it
# would wait behind other work: its predicted finish, with that work x (1 + this), must meet its
# SLO. Predictions drift after a request is queued (batches run longer than predicted,
# neighbours interfere, turns interleave models), and a request admitted right at its limit
# would then be dropped after waiting: the slow refusal that overload must avoid. A request an
# idle gpu-let sends at once is judged on its own learned latency, with nothing to drift.
ADMIT_HEADROOM = 0.1
# Batches a gpu-let holds in flight: the running one and the next (dispatcher.py). A backlog
# drains one batch per max(compute, round trip / this): where the hop outweighs the compute (a
# tiny model), the round trips, not the worker, set the pace.
PIPELINE_DEPTH = 2
# An idle gpu-let whose figure for a model rests on less than this much recent evidence (sample
# weight, estimates.py: a fresh profile, or samples aged away) admits a request even where that
# figure says it will miss its SLO (not its deadline, SLO x GPULET_DEADLINE_FACTOR): a probe.
# A pessimistic profile, or a figure learned in a burst, would otherwise refuse every request
# for ever, and a refused request teaches nothing.
PROBE_BELOW_SAMPLES = 1.0


@dataclass(frozen=True)
class Pending:
    request_id: str
    model: str
    items: int  # rows of the request's batch axis
    arrived_ms: float
    deadline_ms: float
    # When its SLO runs out (admission held it to this): a batch grows past the planned size
    # only while every request in it still makes its SLO, not merely its deadline.
    due_ms: float = float("inf")


@functools.lru_cache(maxsize=1024)
def prior_estimate(latency_ms: tuple[float, ...], batch_size: int) -> Estimate:
    """The estimate of a table before any measurement: the table itself, no hop."""
    return Learner(latency_ms, batch_size).estimate


@dataclass(frozen=True)
class ModelTurn:
    model: str
    batch_size: int  # planned: a batch this full goes at once
    # The prior: the profile's L̂ for 1..len items (index b - 1) x the plan's interference.
    latency_ms: tuple[float, ...]
    estimate: Estimate | None = None  # learned for this gpu-let; None: the prior alone
    # The most items a batch takes when more than the planned size wait (0: the planned size).
    # The plan sizes batches for the rates and default SLOs it planned; a backlog (more
    # traffic, or requests with longer SLOs) runs in larger batches, each request's deadline
    # permitting, rather than queue behind a cap no deadline asks for.
    grow_to: int = 0

    @property
    def max_batch(self) -> int:
        return max(self.batch_size, self.grow_to)

    @functools.cached_property
    def learned(self) -> Estimate:
        if self.estimate is not None:
            return self.estimate
        return prior_estimate(self.latency_ms, self.batch_size)

    def predict(self, items: int) -> float:
        """The worker's time for a batch of `items` (past the table: linear, never optimistic)."""
        return self.learned.compute_ms(items)

    def hop_ms(self, items: int) -> float:
        """The rest of the round trip: router -> agent -> worker and back."""
        return self.learned.hop_ms(items)

    def latency_ms_of(self, items: int) -> float:
        """Sent to an idle gpu-let, answered this long after."""
        return self.learned.latency_ms(items)

    def period_ms(self, items: int) -> float:
        """How often batches of `items` follow one another through a busy gpu-let."""
        compute = self.predict(items)
        return max(compute, (compute + self.hop_ms(items)) / PIPELINE_DEPTH)


@dataclass(frozen=True)
class GpuletPlanView:
    duty_cycle_ms: float
    models: tuple[ModelTurn, ...]

    @functools.cached_property
    def by_model(self) -> dict[str, ModelTurn]:
        """Each model's turn by name: looked up on every request and batch, built once."""
        return {t.model: t for t in self.models}

    @functools.cached_property
    def order(self) -> dict[str, int]:
        return {t.model: i for i, t in enumerate(self.models)}


@dataclass(frozen=True)
class BatchDecision:
    model: str | None  # the model of the batch to send now, if any
    dispatch: tuple[str, ...]  # request ids of that batch, in order
    drop: tuple[str, ...]  # request ids to answer 504 now
    wake_at_ms: float | None  # decide again then (None: only when something arrives)
    next_turn: int


@dataclass(frozen=True)
class Prediction:
    """Admission's prediction for one request on one gpu-let, and what it rests on."""

    finish_ms: float  # when it would be answered (monotonic ms); inf: not served here
    wait_ms: float = 0.0  # until the gpu-let has run what is already in flight
    ahead_ms: float = 0.0  # the batches queued ahead of it, every model (headroom included)
    own_ms: float = 0.0  # its own batch, compute + hop (headroom included)
    own_items: int = 0  # the size its batch is counted at (it may grow to that)
    per_batch_ms: float = 0.0  # learned fixed cost of one batch of its model (compute + hop)
    factor: float | None = None  # learned compute ÷ profile at that size (None: no profile)
    idle: bool = False  # nothing queued or running: it goes out alone, at once
    probe: bool = False  # admitted to measure, whatever the prediction (PROBE_BELOW_SAMPLES)

    def details(self, started_ms: float) -> dict[str, float | int | bool | None]:
        """The numbers a refusal shows, so a client can tell overload from a slow model."""
        return {
            "predicted_ms": round(self.finish_ms - started_ms, 1),
            "wait_ms": round(self.wait_ms, 1),
            "queue_ahead_ms": round(self.ahead_ms, 1),
            "own_batch_ms": round(self.own_ms, 1),
            "own_batch_items": self.own_items,
            "per_batch_ms": round(self.per_batch_ms, 3),
            "learned_factor": None if self.factor is None else round(self.factor, 3),
        }


NOT_SERVED = Prediction(float("inf"))


def decide(
    queue: Sequence[Pending],
    now_ms: float,
    plan: GpuletPlanView,
    turn: int = 0,
    busy_until_ms: float = 0.0,
    may_send: bool = True,
    *,
    running: int = 0,
    work_conserving: bool = False,
) -> BatchDecision:
    """`queue`: the waiting requests in arrival order. `busy_until_ms`: when the batches in
    flight are predicted done; `running`: how many.
    `may_send` False (the worker has enough batches already): drops only; a batch that is
    ready waits, and the caller decides again when a batch is answered."""
    start_ms = max(now_ms, busy_until_ms)
    turns = plan.by_model
    drops: list[str] = []
    by_model: dict[str, list[Pending]] = {t.model: [] for t in plan.models}
    ahead = dict.fromkeys(turns, 0)  # items kept so far per model, in arrival order
    for request in queue:  # in arrival order: the queue keeps them so, no sort per decision
        model = turns.get(request.model)
        if model is None or start_ms + _backlog_ms(turns, ahead, request) > request.deadline_ms:
            drops.append(request.request_id)  # 1. cannot make it behind what is ahead of it
        else:
            by_model[request.model].append(request)
            ahead[request.model] += request.items

    wake_at: float | None = None
    ready: list[tuple[ModelTurn, list[Pending]]] = []
    for model in plan.models:
        waiting = by_model[model.model]
        if not waiting:
            continue
        batch = _feasible_prefix(waiting, model, start_ms)
        items = sum(r.items for r in batch)
        full = items >= model.batch_size or len(batch) < len(waiting)
        window_ends = waiting[0].arrived_ms + plan.duty_cycle_ms
        latest_start = (min(r.deadline_ms for r in batch) - model.latency_ms_of(items)
                        - DISPATCH_SLACK_MS)  # fmt: skip
        wake = min(window_ends, latest_start)
        if work_conserving:
            # Idle: go now. Busy: go as the running batch ends, to reach the worker then.
            frees_at = float("-inf") if running == 0 else busy_until_ms - model.hop_ms(items)
            wake = min(wake, frees_at)
        if full or now_ms >= wake:
            if may_send:
                ready.append((model, batch))
        else:
            wake_at = wake if wake_at is None else min(wake_at, wake)

    if not ready:
        return BatchDecision(None, (), tuple(drops), wake_at, turn)
    count = len(plan.models)
    chosen = min(ready, key=lambda c: (plan.order[c[0].model] - turn) % count)
    next_turn = (plan.order[chosen[0].model] + 1) % count
    ids = tuple(r.request_id for r in chosen[1])
    return BatchDecision(chosen[0].model, ids, tuple(drops), now_ms, next_turn)


def admission_finish(
    plan: GpuletPlanView,
    queued_items: Mapping[str, int],
    request: Pending,
    now_ms: float,
    busy_until_ms: float = 0.0,
    budget_ms: float = float("inf"),
    *,
    idle: bool = False,
    work_conserving: bool = False,
) -> Prediction:
    """When a request arriving now would be answered behind everything queued (`queued_items`
    per model) and in flight (until `busy_until_ms`), and why; NOT_SERVED when the gpu-let
    does not serve its model. O(models): it runs on every request.

    Idle (nothing queued or running) under the work-conserving rule, it goes out alone at
    once: answered after its own learned latency, which is all it is held to. Otherwise its
    own batch counts as large as it may grow: later arrivals join it until it is sent, while
    it still meets the deadlines in it, so up to the planned size or the largest batch that
    fits the request's `budget_ms` (its SLO), whichever is smaller; and the work, with
    admission's headroom."""
    turns = plan.by_model
    own = turns.get(request.model)
    if own is None:
        return NOT_SERVED
    estimate = own.learned
    per_batch_ms = estimate.per_batch_ms()
    if idle and work_conserving:
        own_ms = own.latency_ms_of(request.items)
        return Prediction(now_ms + own_ms, own_ms=own_ms, own_items=request.items,
                          per_batch_ms=per_batch_ms, factor=estimate.factor(request.items),
                          idle=True, probe=estimate.samples < PROBE_BELOW_SAMPLES)  # fmt: skip
    start_ms = max(now_ms, busy_until_ms)
    stretch = 1 + ADMIT_HEADROOM
    grows_to = max((b for b in range(request.items, own.batch_size + 1)
                    if own.latency_ms_of(b) * stretch <= budget_ms),
                   default=request.items)  # fmt: skip
    ahead = {name: queued_items.get(name, 0) for name in turns}
    total_ms = _backlog_ms(turns, ahead, request, own_batch=grows_to) * stretch
    in_batch = max(ahead[request.model] % own.batch_size + request.items, grows_to)
    own_ms = own.latency_ms_of(in_batch) * stretch
    return Prediction(start_ms + total_ms, wait_ms=start_ms - now_ms, ahead_ms=total_ms - own_ms,
                      own_ms=own_ms, own_items=in_batch, per_batch_ms=per_batch_ms,
                      factor=estimate.factor(in_batch))  # fmt: skip


def _backlog_ms(
    turns: dict[str, ModelTurn], ahead: dict[str, int], request: Pending, own_batch: int = 0
) -> float:
    """When `request` would be answered from the gpu-let's start: the full batches of every
    model queued before it, then its own batch (at least `own_batch` items) and its hop back.
    Batches of the planned size: a backlog may run in larger ones (ModelTurn.grow_to), but only
    as far as SLOs allow, so counting on them would promise what may not come.
    Without the queue ahead, an overloaded gpu-let keeps admitting requests that can only be
    dropped later, after waiting (not "at once")."""
    own = turns[request.model]
    total = 0.0
    for name, items in ahead.items():
        turn = turns[name]
        if name == request.model:
            batches_before = items // turn.batch_size
            in_batch = max(items % turn.batch_size + request.items, own_batch)
            total += batches_before * turn.period_ms(turn.batch_size) + \
                own.latency_ms_of(in_batch)  # fmt: skip
        elif items:
            full, rest = divmod(items, turn.batch_size)
            total += full * turn.period_ms(turn.batch_size) + \
                (turn.period_ms(rest) if rest else 0.0)  # fmt: skip
    return total


def _feasible_prefix(
    waiting: Sequence[Pending], model: ModelTurn, start_ms: float
) -> list[Pending]:
    """The longest FIFO prefix within the batch size whose every request meets its deadline,
    and, past the planned size, its SLO too (a backlog runs in larger batches, but not late)."""
    best: list[Pending] = []
    items = 0
    earliest_deadline = earliest_due = float("inf")
    for request in waiting:
        if items + request.items > model.max_batch and best:
            break
        items += request.items
        earliest_deadline = min(earliest_deadline, request.deadline_ms)
        earliest_due = min(earliest_due, request.due_ms)
        finish_ms = start_ms + model.latency_ms_of(items)
        if finish_ms > earliest_deadline or (items > model.batch_size and best
                                             and finish_ms > earliest_due):  # fmt: skip
            break
        best.append(request)
    return best or [waiting[0]]
