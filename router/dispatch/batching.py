"""The batching decision for one gpu-let (pure): what to send now, what to drop, when to look again.

`decide(queue, now_ms, plan, turn, busy_until_ms)` sees the queued requests and the gpu-let's plan
(per model: planned batch size and predicted latency per batch; the duty cycle) and returns:
    1. drops: requests that cannot meet their deadline behind the work queued before them:
       start + L̂(the full batches of every model ahead of it) + L̂(its own batch) > deadline
       (eager deadline drop: answered 504 now, never run);
    2. a batch to send now, when the model's batch is full, or the oldest request has waited a
       whole duty cycle (the Nexus/gpu-let batching window), or waiting any longer would make
       the oldest late: start + L̂(batch) ≥ its deadline − slack. A batch is sent even while the
       gpu-let is still busy: it queues at the worker, which then never idles between batches
       (holding it back by a margin-inflated prediction would); `busy_until_ms` only dates the
       start that deadlines are judged by. The caller keeps that queue short (`may_send`): a
       batch formed long before it runs is cut small by its deadlines, and small batches
       lose throughput exactly when the gpu-let is overloaded;
       the batch is the longest FIFO prefix within the planned batch size whose every request
       still meets its deadline;
    3. otherwise the time to decide again.
Models sharing a gpu-let take turns: from `turn` on, the first model with a batch to send goes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Decide this much before the last moment: the agent hop and the worker wake-up take time.
DISPATCH_SLACK_MS = 1.0
# Admission asks this much more of a new request than the queue asks of those it holds: its
# predicted finish, with the work ahead x (1 + this), must meet its deadline. Predictions drift
# after a request is queued (batches run longer than predicted, neighbours interfere, turns
# interleave models), and a request admitted right at its limit would then be dropped after
# waiting: the slow refusal that overload must avoid.
ADMIT_HEADROOM = 0.1


@dataclass(frozen=True)
class Pending:
    request_id: str
    model: str
    items: int  # rows of the request's batch axis
    arrived_ms: float
    deadline_ms: float


@dataclass(frozen=True)
class ModelTurn:
    model: str
    batch_size: int  # planned; a batch never holds more items
    latency_ms: tuple[float, ...]  # predicted L̂ for 1..len items (index b - 1)

    def predict(self, items: int) -> float:
        """L̂ for `items`; past the table, the last entry per item (linear, never optimistic)."""
        if items <= len(self.latency_ms):
            return self.latency_ms[items - 1]
        last = self.latency_ms[-1]
        return last * items / len(self.latency_ms)


@dataclass(frozen=True)
class GpuletPlanView:
    duty_cycle_ms: float
    models: tuple[ModelTurn, ...]

    @functools.cached_property
    def by_model(self) -> dict[str, ModelTurn]:
        """Each model's turn by name: looked up on every request and batch, built once."""
        return {t.model: t for t in self.models}


@dataclass(frozen=True)
class BatchDecision:
    model: str | None  # the model of the batch to send now, if any
    dispatch: tuple[str, ...]  # request ids of that batch, in order
    drop: tuple[str, ...]  # request ids to answer 504 now
    wake_at_ms: float | None  # decide again then (None: only when something arrives)
    next_turn: int


def decide(
    queue: Sequence[Pending],
    now_ms: float,
    plan: GpuletPlanView,
    turn: int = 0,
    busy_until_ms: float = 0.0,
    slowdown: float = 1.0,
    may_send: bool = True,
) -> BatchDecision:
    """`slowdown`: how much slower than predicted this gpu-let's batches have been running
    (measured by the caller; 1 = as predicted); every prediction here is scaled by it.
    `may_send` False (the worker has enough batches already): drops only; a batch that is
    ready waits, and the caller decides again when a batch is answered."""
    start_ms = max(now_ms, busy_until_ms)
    turns = plan.by_model
    drops: list[str] = []
    by_model: dict[str, list[Pending]] = {t.model: [] for t in plan.models}
    ahead = dict.fromkeys(turns, 0)  # items kept so far per model, in arrival order
    for request in sorted(queue, key=lambda r: (r.arrived_ms, r.request_id)):
        model = turns.get(request.model)
        if model is None or start_ms + _backlog_ms(turns, ahead, request) * slowdown > \
                request.deadline_ms:  # fmt: skip
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
        batch = _feasible_prefix(waiting, model, start_ms, slowdown)
        items = sum(r.items for r in batch)
        full = items >= model.batch_size or len(batch) < len(waiting)
        oldest = waiting[0]
        window_ends = oldest.arrived_ms + plan.duty_cycle_ms
        latest_start = (min(r.deadline_ms for r in batch) - model.predict(items) * slowdown
                        - DISPATCH_SLACK_MS)  # fmt: skip
        if full or now_ms >= window_ends or now_ms >= latest_start:
            if not may_send:
                continue
            ready.append((model, batch))
        else:
            when = min(window_ends, latest_start)
            wake_at = when if wake_at is None else min(wake_at, when)

    if not ready:
        return BatchDecision(None, (), tuple(drops), wake_at, turn)
    order = [t.model for t in plan.models]
    count = len(order)
    chosen = min(ready, key=lambda c: (order.index(c[0].model) - turn) % count)
    next_turn = (order.index(chosen[0].model) + 1) % count
    ids = tuple(r.request_id for r in chosen[1])
    return BatchDecision(chosen[0].model, ids, tuple(drops), now_ms, next_turn)


def admission_finish_ms(
    plan: GpuletPlanView,
    queued_items: Mapping[str, int],
    request: Pending,
    start_ms: float,
    slowdown: float = 1.0,
    budget_ms: float = float("inf"),
) -> float:
    """When a request arriving now would finish behind everything queued (`queued_items` per
    model), with admission's headroom; inf when the gpu-let does not serve its model.

    Its own batch counts as large as it may grow: later arrivals join it until it is sent,
    while it still meets the deadlines in it, so up to the planned size or the largest batch
    that fits the request's `budget_ms` (its SLO), whichever is smaller. The plan keeps a full
    batch inside the model's SLO, so an idle gpu-let still admits. O(models): it runs on every
    request."""
    turns = plan.by_model
    own = turns.get(request.model)
    if own is None:
        return float("inf")
    stretch = slowdown * (1 + ADMIT_HEADROOM)
    grows_to = max((b for b in range(1, own.batch_size + 1)
                    if own.predict(b) * stretch <= budget_ms), default=1)  # fmt: skip
    ahead = {name: queued_items.get(name, 0) for name in turns}
    return start_ms + _backlog_ms(turns, ahead, request, own_batch=grows_to) * stretch


def _backlog_ms(
    turns: dict[str, ModelTurn], ahead: dict[str, int], request: Pending, own_batch: int = 0
) -> float:
    """When `request` would finish from the gpu-let's start: the full batches of every model
    queued before it, then its own batch (at least `own_batch` items). Without the queue ahead,
    an overloaded gpu-let keeps admitting requests that can only be dropped later, after
    waiting (not "at once")."""
    own = turns[request.model]
    total = 0.0
    for name, items in ahead.items():
        turn = turns[name]
        if name == request.model:
            batches_before = items // turn.batch_size
            in_batch = max(items % turn.batch_size + request.items, own_batch)
            total += batches_before * turn.predict(turn.batch_size) + own.predict(in_batch)
        elif items:
            full, rest = divmod(items, turn.batch_size)
            total += full * turn.predict(turn.batch_size) + (turn.predict(rest) if rest else 0.0)
    return total


def _feasible_prefix(
    waiting: Sequence[Pending], model: ModelTurn, start_ms: float, slowdown: float
) -> list[Pending]:
    """The longest FIFO prefix within the batch size whose every request meets its deadline."""
    best: list[Pending] = []
    items = 0
    earliest_deadline = float("inf")
    for request in waiting:
        if items + request.items > model.batch_size and best:
            break
        items += request.items
        earliest_deadline = min(earliest_deadline, request.deadline_ms)
        if start_ms + model.predict(items) * slowdown > earliest_deadline:
            break
        best.append(request)
    return best or [waiting[0]]
