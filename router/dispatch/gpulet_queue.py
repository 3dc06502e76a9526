"""One gpu-let's queue (I/O): the requests routed to it, the batches `batching.decide` forms,
sent to the agent without blocking the loop, and the answers split back to the requests.

Until a batch is predicted done, the gpu-let counts as busy, so the next batch forms meanwhile.
Each answer teaches the queue that model's latency on this gpu-let (estimates.py): the
worker's `compute_ms` and the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from common import frames
from common.errors import DeadlinePassed, GpuletError
from router.dispatch.agent_client import AgentClient
from router.dispatch.batching import (
    NOT_SERVED,
    PIPELINE_DEPTH,
    GpuletPlanView,
    Pending,
    Prediction,
    admission_finish,
    decide,
)
from router.dispatch.estimates import Learner, prior_table
from router.dispatch.observer import DispatchObserver
from router.dispatch.routing import Route

logger = logging.getLogger(__name__)

SENT = -1.0  # `_step`'s answer after sending a batch: decide again at once
# Learned estimates age (drift back toward the profile) at most this often: on a request or a
# batch, never on a timer of their own.
REFRESH_MS = 250.0
# Batches sent to a gpu-let and not yet answered: the running one and one queued behind it,
# so the worker never idles between batches. More would fix batches long before they run.
MAX_BATCHES_IN_FLIGHT = PIPELINE_DEPTH


@dataclass
class Entry:
    pending: Pending
    inputs: dict[str, frames.Array]
    future: asyncio.Future[Answer]


@dataclass(frozen=True)
class Answer:
    """What a batch gives back to each of its requests."""

    outputs: dict[str, frames.Array]
    batch_items: int  # items run together in the batch this request rode in
    simulated: bool


@dataclass(frozen=True)
class Result:
    outputs: dict[str, frames.Array]
    gpulet_id: str
    batch_items: int
    simulated: bool


class GpuletQueue:
    """Requests waiting for one gpu-let; its loop batches them on the plan's duty cycle."""

    def __init__(
        self,
        route: Route,
        view: GpuletPlanView,
        client: AgentClient,
        clock: Callable[[], float],
        observer: DispatchObserver,
        work_conserving: bool = True,
        share: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.route = route
        # The share of the gpu-let this router feeds (Dispatcher.capacity_share): with other
        # routers' batches queued at the agent too, it keeps fewer of its own there.
        self.share = share
        self.client = client
        self.clock = clock
        self.observer = observer
        self.work_conserving = work_conserving
        # Per model: its own samples, so one model's slow batches never move another's figures.
        self.learners: dict[str, Learner] = {}
        self.view = view
        self.set_view(view)
        self._refreshed_ms = clock() * 1000
        self.entries: dict[str, Entry] = {}
        self.queued_items = 0
        self.queued_by_model: dict[str, int] = {}
        self.inflight_items = 0
        self.turn = 0
        self.busy_until_ms = 0.0
        self._predicted_ms: dict[int, float] = {}  # batches sent and not answered, in order
        self._batch_numbers = itertools.count()
        # Measured busy time (a batch in flight), for the observer: overlapping batches count
        # once, so it never exceeds wall time.
        self._batches_in_flight = 0
        self._busy_ms = 0.0  # not yet reported
        self._busy_mark_ms = 0.0  # when `_busy_ms` was last brought up to date
        self.closing = False
        self._wakeup = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        # Sends handed to a caller to await inline: not tasks of ours, but `close` must wait
        # for them too, or a drained gpu-let is stopped under a batch about to reach it.
        self._inline_sends: set[asyncio.Future[None]] = set()
        self.task = asyncio.create_task(self._loop(), name=f"queue-{route.gpulet.gpulet_id}")

    @property
    def outstanding_items(self) -> int:
        return self.queued_items + self.inflight_items

    def set_view(self, view: GpuletPlanView) -> None:
        """Take a (new) plan's view; a model keeps what it learned unless its prior changed."""
        learners = {}
        for turn in view.models:
            kept = self.learners.get(turn.model)
            same_prior = kept is not None and kept.prior_ms == prior_table(turn.latency_ms) \
                and kept.batch_size == turn.batch_size  # fmt: skip
            learners[turn.model] = kept if kept is not None and same_prior else \
                Learner(turn.latency_ms, turn.batch_size)  # fmt: skip
        self.learners = learners
        self.view = view
        self._apply_estimates()

    def _apply_estimates(self) -> None:
        self.view = GpuletPlanView(
            self.view.duty_cycle_ms,
            tuple(replace(t, estimate=self.learners[t.model].estimate) for t in self.view.models),
        )  # fmt: skip

    def _refresh(self, now_ms: float) -> None:
        """Age the samples (a model with none lately drifts back toward its profile)."""
        if now_ms - self._refreshed_ms < REFRESH_MS:
            return
        self._refreshed_ms = now_ms
        for learner in self.learners.values():
            learner.refresh(now_ms)
        self._apply_estimates()

    def estimates(self) -> dict[str, dict[str, float | None]]:
        """The learned figures per model, at its planned batch size (for /v1/cluster, metrics)."""
        return {t.model: {"batch_size": t.batch_size, **t.learned.to_json(t.batch_size)}
                for t in self.view.models}  # fmt: skip

    def finish(
        self, pending: Pending, now_ms: float, budget_ms: float, share: float = 1.0
    ) -> Prediction:
        """When `pending` would be answered if queued now, behind everything queued and
        running, and why (`budget_ms`: its SLO, which bounds its batch); `share`: of the
        gpu-let, when other routers feed it too (shared_prediction)."""
        if pending.model not in self.view.by_model:
            return NOT_SERVED
        self._refresh(now_ms)
        return shared_prediction(
            admission_finish(self.view, self.queued_by_model, pending, now_ms,
                             self.busy_until_ms, budget_ms, idle=self.idle_at(now_ms),
                             work_conserving=self.work_conserving),
            now_ms, share,
        )  # fmt: skip

    def idle_at(self, now_ms: float) -> bool:
        """Nothing queued and nothing running."""
        return not self.queued_items and not self._predicted_ms

    def submit(self, entry: Entry) -> Awaitable[None] | None:
        """Queue `entry`; returns the send to await inline when it goes out alone at once."""
        self.entries[entry.pending.request_id] = entry
        self.queued_items += entry.pending.items
        model = entry.pending.model
        self.queued_by_model[model] = self.queued_by_model.get(model, 0) + entry.pending.items
        if len(self._predicted_ms) >= batches_in_flight(self.share()):
            # The worker holds all the batches it may: nothing can go before one is answered,
            # which wakes the loop. Deciding now would only scan the whole queue (the door
            # judged this request's deadline already), per request: quadratic in the queue
            # under overload, which stalled the router at 1,000 clients.
            return None
        # Decide at once: a request that completes a batch goes out without waiting for the
        # loop to wake (the loop still handles windows and deadlines).
        try:
            return self._step(inline_for=entry.pending.request_id)[1]
        finally:
            self._wakeup.set()

    async def close(self) -> None:
        """Stop taking work, let what is queued and in flight finish, then stop."""
        self.closing = True
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self._sends or self._inline_sends:
            await asyncio.gather(*self._sends, *self._inline_sends, return_exceptions=True)

    async def _loop(self) -> None:
        while not (self.closing and not self.entries):
            try:
                wake_at, _ = self._step()
            except Exception:  # a bug here must not strand the queue's requests
                logger.exception("gpulet=%s batching step failed", self.route.gpulet.gpulet_id)
                self._fail_all(GpuletError("internal error while batching; see the router log"))
                wake_at = None
            self._wakeup.clear()
            if wake_at == SENT:
                continue  # sent a batch: decide again at once
            timeout = None if wake_at is None else max(0.0, wake_at / 1000 - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def _step(
        self, inline_for: str | None = None
    ) -> tuple[float | None, Coroutine[Any, Any, None] | None]:
        """One decision: (SENT, None) after sending, else (when to decide again, ms monotonic,
        None). With `inline_for`, a batch of just that request comes back unsent, as (SENT, the
        send) for its caller to await: one task fewer on the common path, and a cancelled
        caller can only lose its own request."""
        now_ms = self.clock() * 1000
        self._refresh(now_ms)
        decision = decide(
            [e.pending for e in self.entries.values()], now_ms, self.view, self.turn,
            self.busy_until_ms,
            may_send=len(self._predicted_ms) < batches_in_flight(self.share()),
            running=len(self._predicted_ms), work_conserving=self.work_conserving,
        )  # fmt: skip
        for request_id in decision.drop:
            entry = self._take(request_id)
            if not entry.future.done():
                entry.future.set_exception(
                    DeadlinePassed(
                        f"{entry.pending.model} cannot finish before its deadline; dropped "
                        "before running",
                        gpulet=self.route.gpulet.gpulet_id,
                    )
                )
        if decision.model is None:
            return decision.wake_at_ms, None
        batch = [self._take(request_id) for request_id in decision.dispatch]
        items = sum(e.pending.items for e in batch)
        turn = self.view.by_model[decision.model]
        # Sent to an idle worker, the batch is answered after its hop and compute; behind a
        # running one, its compute follows that one's.
        predicted_ms = turn.predict(items) + (0.0 if self._predicted_ms else turn.hop_ms(items))
        self.busy_until_ms = max(self.busy_until_ms, now_ms) + predicted_ms
        batch_no = next(self._batch_numbers)
        self._predicted_ms[batch_no] = predicted_ms
        self.turn = decision.next_turn
        self.inflight_items += items
        alone = len(self._predicted_ms) == 1  # nothing else in flight: its round trip is its own
        if inline_for is not None and decision.dispatch == (inline_for,):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inline_sends.add(done)
            return SENT, self._send(decision.model, batch, items, batch_no, alone, done)
        task = asyncio.create_task(self._send(decision.model, batch, items, batch_no, alone))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        return SENT, None

    def _learn(
        self, model: str, items: int, compute_ms: object, round_trip_ms: float | None
    ) -> None:
        learner = self.learners.get(model)
        if learner is None or not isinstance(compute_ms, (int, float)) or compute_ms < 0:
            return  # a reply without the worker's time teaches nothing
        learner.record(items, float(compute_ms), round_trip_ms, self.clock() * 1000)
        self._apply_estimates()

    def _take(self, request_id: str) -> Entry:
        entry = self.entries.pop(request_id)
        self.queued_items -= entry.pending.items
        self.queued_by_model[entry.pending.model] -= entry.pending.items
        return entry

    def _busy_tick(self, now_ms: float) -> None:
        """Bring `_busy_ms` up to `now_ms`: the time since the last tick was busy if a batch
        was in flight throughout it (the count changes only at ticks)."""
        if self._batches_in_flight:
            self._busy_ms += now_ms - self._busy_mark_ms
        self._busy_mark_ms = now_ms

    async def _send(
        self, model: str, batch: list[Entry], items: int, batch_no: int, alone: bool,
        inline_done: asyncio.Future[None] | None = None,
    ) -> None:  # fmt: skip
        self._busy_tick(self.clock() * 1000)
        self._batches_in_flight += 1
        try:
            inputs = {
                name: np.concatenate([e.inputs[name] for e in batch], axis=0)
                if len(batch) > 1
                else batch[0].inputs[name]
                for name in batch[0].inputs
            }
            deadline_s = min(e.pending.deadline_ms for e in batch) / 1000
            sent_s = self.clock()
            reply = await self.client.run(
                self.route.agent_url, self.route.gpulet.gpulet_id, model, inputs,
                deadline_s - sent_s, batch[0].pending.request_id,
            )  # fmt: skip
            # Behind a running batch, the round trip holds its wait at the worker too: only a
            # batch sent alone says what the hop costs.
            round_trip_ms = (self.clock() - sent_s) * 1000 if alone else None
            self._learn(model, items, reply.header.get("compute_ms"), round_trip_ms)
            offset = 0
            for entry in batch:
                rows = entry.pending.items
                mine = {k: v[offset : offset + rows] for k, v in reply.tensors.items()}
                offset += rows
                if not entry.future.done():
                    entry.future.set_result(
                        Answer(mine, items, bool(reply.header.get("simulated")))
                    )
        except GpuletError as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
        except Exception as exc:
            logger.exception("gpulet=%s batch failed unexpectedly", self.route.gpulet.gpulet_id)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(GpuletError(f"internal error: {type(exc).__name__}"))
        finally:
            self.inflight_items -= items
            # Re-anchor the predicted end on what happened: the agent runs a gpu-let's batches
            # in order, so the next one starts now. Summing margin-inflated predictions alone
            # drifts ahead of a gpu-let kept busy, and drops requests it could still serve.
            self._predicted_ms.pop(batch_no, None)
            self.busy_until_ms = self.clock() * 1000 + sum(self._predicted_ms.values())
            now_ms = self.clock() * 1000
            self._busy_tick(now_ms)
            self._batches_in_flight -= 1
            busy_ms, self._busy_ms = self._busy_ms, 0.0
            self.observer.batch_done(self.route.gpulet.gpulet_id, model, items, busy_ms, now_ms)
            self._wakeup.set()
            if inline_done is not None:
                self._inline_sends.discard(inline_done)
                inline_done.set_result(None)

    def _fail_all(self, error: GpuletError) -> None:
        for request_id in list(self.entries):
            entry = self._take(request_id)
            if not entry.future.done():
                entry.future.set_exception(error)


def shared_prediction(prediction: Prediction, now_ms: float, share: float) -> Prediction:
    """`prediction` at a gpu-let this router feeds `share` of (Dispatcher.capacity_share):
    the other routers' work waits at the agent beside this router's, about (1/share - 1)
    times as much, so the wait for what runs and the work queued ahead of the request scale by
    1/share; its own batch does not. share 1 (one router): unchanged."""
    if share >= 1.0 or prediction.finish_ms == float("inf"):
        return prediction
    wait_ms, ahead_ms = prediction.wait_ms / share, prediction.ahead_ms / share
    return replace(prediction, finish_ms=now_ms + wait_ms + ahead_ms + prediction.own_ms,
                   wait_ms=wait_ms, ahead_ms=ahead_ms)  # fmt: skip


def batches_in_flight(share: float) -> int:
    """This router's part of MAX_BATCHES_IN_FLIGHT at a gpu-let it feeds `share` of: the
    agent then holds about as many batches as with one router, and each router's next batch
    grows while the others' run (at least one: a router always gets to send)."""
    return max(1, round(MAX_BATCHES_IN_FLIGHT * share))
