"""The dispatcher (I/O): admits, routes and queues requests over the gpu-lets' queues.

A request is admitted (admission.py) and sent to the first gpu-let of its model (weights.py
ranks them) predicted to finish it within its SLO; its queue (gpulet_queue.py) batches and
sends it. When none is predicted in time it is refused at once, with the prediction it rests on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common import frames
from common.errors import DeadlinePassed, GpuletError, Unavailable
from router.dispatch.admission import Verdict, admit
from router.dispatch.agent_client import AgentClient
from router.dispatch.batching import (
    NOT_SERVED,
    GpuletPlanView,
    Pending,
    Prediction,
)
from router.dispatch.gpulet_queue import Answer, Entry, GpuletQueue, Result
from router.dispatch.observer import OK, DispatchObserver, NoObserver
from router.dispatch.routing import Route, RoutingTable
from router.dispatch.weights import RouteLoad, ranked

GUARD_S = 1.0  # past the deadline, a request still unanswered is failed by `submit` itself
DEFAULT_MAX_HELD_BYTES = 1 << 30  # 1 GiB of request tensors


@dataclass
class Dispatcher:
    """Admits, routes and queues requests; follows the routing table the control loop builds."""

    client: AgentClient
    retry_after_s: float
    views: Callable[[Route], GpuletPlanView]
    best_latency_ms: Callable[[str], float | None]
    # Input bytes the router may hold in its queues and in flight; past it, 503 overloaded.
    # Time is bounded by admission (predicted finish within the SLO), memory by this.
    max_held_bytes: int = DEFAULT_MAX_HELD_BYTES
    work_conserving: bool = True  # False: the duty-cycle rule (batching.decide)
    clock: Callable[[], float] = time.monotonic
    observer: DispatchObserver = field(default_factory=NoObserver)  # metrics, when served
    queues: dict[str, GpuletQueue] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    _routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)
    # Best achievable latency per model: it changes only with the plan, so it is worked out
    # once per routing table rather than on every request.
    _best_ms: dict[str, float | None] = field(default_factory=dict)
    _draining: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    on_drained: Callable[[], None] | None = None  # the control loop stops drained gpu-lets
    # The share of each gpu-let's capacity this router admits against (1: it is the only
    # router; 1/N with N routers: the control loop's Controller.capacity_share).
    capacity_share: Callable[[], float] = lambda: 1.0
    # Requests admitted and not yet answered, per model, and who waits for a model's to end
    # (model unload answers once its requests are done).
    active: dict[str, int] = field(default_factory=dict)
    _idle: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)
    held_bytes: int = 0  # input bytes of the requests admitted and not yet answered

    def follow(self, table: RoutingTable) -> None:
        """Queues for the table's gpu-lets; queues of gpu-lets gone drain in the background.

        A gpu-let that stays (same id, same agent) keeps its queue and takes the new plan's
        batch sizes in place; its waiting requests are not moved."""
        self._routes = table.routes
        self._best_ms.clear()
        wanted = {r.gpulet.gpulet_id: r for routes in table.routes.values() for r in routes}
        for gpulet_id, queue in list(self.queues.items()):
            route = wanted.get(gpulet_id)
            if route is not None and route.agent_url == queue.route.agent_url:
                if route != queue.route:
                    queue.route = route
                    queue.set_view(self.views(route))
                continue
            del self.queues[gpulet_id]
            self._drain(queue)
        for gpulet_id, route in wanted.items():
            if gpulet_id not in self.queues:
                self.queues[gpulet_id] = GpuletQueue(route, self.views(route), self.client,
                                                     self.clock, self.observer,
                                                     self.work_conserving,
                                                     share=self.capacity_share)  # fmt: skip

    def in_use(self) -> set[str]:
        """Gpu-lets that have a queue, or a queue still draining: not to be stopped yet."""
        return set(self.queues) | set(self._draining)

    def _drain(self, queue: GpuletQueue) -> None:
        gpulet_id = queue.route.gpulet.gpulet_id
        task = asyncio.get_running_loop().create_task(queue.close())
        self._draining[gpulet_id] = task

        def drained(_: asyncio.Task[None]) -> None:
            if self._draining.get(gpulet_id) is task:
                del self._draining[gpulet_id]
            if self.on_drained is not None:
                self.on_drained()

        task.add_done_callback(drained)

    async def idle(self, model: str) -> None:
        """Return once no request for `model` is waiting or running."""
        if self.active.get(model, 0) == 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.setdefault(model, []).append(waiter)
        await waiter

    async def submit(
        self, model: str, inputs: dict[str, frames.Array], items: int, slo_ms: float,
        deadline_ms: float, request_id: str, *, received_ms: float | None = None,
    ) -> Result:  # fmt: skip
        """Run one request; `received_ms` (monotonic) dates its arrival for the observer's
        latency (default: now)."""
        self.active[model] = self.active.get(model, 0) + 1
        nbytes = sum(a.nbytes for a in inputs.values())
        try:
            return await self._submit(model, inputs, items, slo_ms, deadline_ms, request_id,
                                      received_ms, nbytes)  # fmt: skip
        finally:
            self.active[model] -= 1
            if self.active[model] == 0:
                del self.active[model]
                for waiter in self._idle.pop(model, []):
                    if not waiter.done():
                        waiter.set_result(None)

    async def _submit(
        self, model: str, inputs: dict[str, frames.Array], items: int, slo_ms: float,
        deadline_ms: float, request_id: str, received_ms: float | None, nbytes: int,
    ) -> Result:  # fmt: skip
        started_ms = self.clock() * 1000 if received_ms is None else received_ms
        queues = [self.queues[r.gpulet.gpulet_id] for r in self._routes.get(model, ())
                  if r.gpulet.gpulet_id in self.queues]  # fmt: skip
        if not queues:
            self._answered(model, "unavailable", None, started_ms, slo_ms)
            raise Unavailable(f"no ready gpulet serves {model} yet; retry shortly", model=model,
                              retry_after_s=self.retry_after_s)  # fmt: skip
        if model not in self._best_ms:
            self._best_ms[model] = self.best_latency_ms(model)
        verdict = admit(model, slo_ms, self._best_ms[model], self.held_bytes, nbytes,
                        self.max_held_bytes, self.retry_after_s)  # fmt: skip
        if verdict.verdict is not Verdict.OK:
            assert verdict.error is not None
            self._answered(model, verdict.error.code, None, started_ms, slo_ms)
            raise verdict.error
        loads = [RouteLoad(q.route.gpulet.gpulet_id, _planned(q.route, model), q.outstanding_items)
                 for q in queues]  # fmt: skip
        arrived_ms = self.clock() * 1000
        pending = Pending(
            request_id, model, items, arrived_ms, deadline_ms, due_ms=started_ms + slo_ms
        )
        # Eager drop at the door: the first gpu-let (in routing order) that can finish it
        # within its SLO takes it; when none can, it is refused now rather than after waiting.
        # Once queued it may run until its deadline (slo x GPULET_DEADLINE_FACTOR): a little
        # drift then makes it late rather than dropped.
        admit_by_ms = min(deadline_ms, started_ms + slo_ms)
        best = NOT_SERVED
        tried = []
        probe: GpuletQueue | None = None
        share = self.capacity_share()
        for candidate in ranked(loads):
            queue = self.queues[candidate]
            tried.append(queue)
            prediction = queue.finish(pending, arrived_ms, admit_by_ms - arrived_ms, share)
            if prediction.finish_ms < best.finish_ms:
                best = prediction
            if prediction.finish_ms <= admit_by_ms:
                break
            # A probe still has to be predicted to make its deadline: else the queue would
            # only drop it unsent.
            if prediction.probe and probe is None and prediction.finish_ms <= deadline_ms:
                probe = queue
        else:
            if probe is not None and admit_by_ms > arrived_ms:
                # No gpu-let is predicted in time, but an idle one has next to no evidence
                # for its figure: run it, and learn (a refused request would teach nothing).
                queue = probe
            else:
                self._answered(model, DeadlinePassed.code, None, started_ms, slo_ms)
                raise _refusal(model, started_ms, arrived_ms, best, admit_by_ms,
                               busy=not all(q.idle_at(arrived_ms) for q in tried))  # fmt: skip
        gpulet_id = queue.route.gpulet.gpulet_id
        future: asyncio.Future[Answer]
        future = asyncio.get_running_loop().create_future()
        self.held_bytes += nbytes
        try:
            inline = queue.submit(Entry(pending, inputs, future))
            if inline is not None:
                await inline  # sets `future`
            return await self._answer(model, future, gpulet_id, started_ms, slo_ms, deadline_ms)
        finally:
            self.held_bytes -= nbytes

    async def _answer(
        self, model: str, future: asyncio.Future[Answer], gpulet_id: str, started_ms: float,
        slo_ms: float, deadline_ms: float,
    ) -> Result:  # fmt: skip
        try:
            # The queue answers every request by its deadline; this guard only keeps a stalled
            # queue (a bug) from hanging the client.
            async with asyncio.timeout(max(0.0, deadline_ms / 1000 - self.clock()) + GUARD_S):
                answer = await future
        except TimeoutError:
            self._answered(model, DeadlinePassed.code, gpulet_id, started_ms, slo_ms)
            raise DeadlinePassed(f"{model}: no answer before the deadline", model=model) from None
        except GpuletError as exc:
            self._answered(model, exc.code, gpulet_id, started_ms, slo_ms)
            raise
        self._answered(model, OK, gpulet_id, started_ms, slo_ms)
        return Result(answer.outputs, gpulet_id, answer.batch_items, answer.simulated)

    def count(self, model: str, outcome: str) -> None:
        per_model = self.outcomes.setdefault(model, {})
        per_model[outcome] = per_model.get(outcome, 0) + 1

    def _answered(
        self, model: str, code: str, gpulet_id: str | None, started_ms: float, slo_ms: float
    ) -> None:
        self.count(model, code)
        now_ms = self.clock() * 1000
        self.observer.request_done(model, code, gpulet_id, now_ms - started_ms, slo_ms, now_ms)

    async def close(self) -> None:
        queues, self.queues = list(self.queues.values()), {}
        await asyncio.gather(*(q.close() for q in queues), *self._draining.values(),
                             return_exceptions=True)  # fmt: skip


def _refusal(
    model: str, started_ms: float, now_ms: float, prediction: Prediction, admit_by_ms: float,
    busy: bool,
) -> DeadlinePassed:
    """Why a request is refused at the door, in words that say what to change, with the
    prediction it rests on."""
    budget_ms = admit_by_ms - started_ms
    details: dict[str, Any] = {"model": model, "slo_ms": round(budget_ms, 1)}
    if admit_by_ms <= now_ms:
        return DeadlinePassed(f"{model}: its deadline ({budget_ms:.0f} ms) passed before it "
                              "could be queued", **details)  # fmt: skip
    details.update(prediction.details(started_ms))
    finish_ms = prediction.finish_ms
    why = ("the model is overloaded: retry later or allow a longer SLO" if busy else
           "its batch alone takes longer: allow a longer SLO")  # fmt: skip
    factor = "" if prediction.factor is None else f", learned x{prediction.factor:.2f} the profile"
    return DeadlinePassed(
        f"{model}: it would finish {finish_ms - started_ms:.0f} ms after it arrived, past its "
        f"SLO ({budget_ms:.0f} ms): {prediction.wait_ms:.0f} ms until the gpu-let is free + "
        f"{prediction.ahead_ms:.0f} ms queued ahead + {prediction.own_ms:.0f} ms for its own "
        f"batch of {prediction.own_items} (per batch {prediction.per_batch_ms:.1f} ms{factor}); "
        f"refused before queueing ({why})", **details,
    )  # fmt: skip


def _planned(route: Route, model: str) -> float:
    return next((m.planned_rps for m in route.gpulet.models if m.name == model), 0.0)
