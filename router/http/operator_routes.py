"""Read-only endpoints for operators and their tools: `GET /metrics` (Prometheus text format)
and `GET /v1/plan` (the running plan, predicted, and the peak rate the devices carry).

`gpulet status` and `gpulet plan|peak --url` (common/cli/operator.py) read these and
`/v1/cluster`, `/v1/models`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.interference import InterferenceModel, NoInterference
from common.profiles import DeviceProfile
from router.control.control import Controller
from router.control.rates import RateMonitor
from router.dispatch.dispatcher import Dispatcher
from router.http import codec
from router.http.inflight import Door
from router.http.metrics import ClusterCollector, DispatchMetrics, metrics_registry
from router.http.openapi import error_responses
from router.scheduling.live_report import live_peak, predicted_gpulets
from router.scheduling.offline import interference_for


class PeakCache:
    """The last peak search and what it was made from: a search takes a second or more, and
    its inputs (agents' devices, profile, SLOs, scheduler) change only with the cluster."""

    def __init__(self) -> None:
        self._inputs: object = None
        self._profile: object = None
        self._body: dict[str, Any] | None = None

    async def get(self, controller: Controller) -> dict[str, Any]:
        agents, profile = list(controller.agents), controller.profile
        inputs = (tuple((a.agent_id, a.devices) for a in agents), tuple(controller.slos_ms.items()),
                  controller.scheduler)  # fmt: skip
        if self._body is not None and self._inputs == inputs and self._profile is profile:
            return self._body
        started = time.perf_counter()
        # Pure CPU work: in a thread, so the event loop goes on serving (sharing the GIL).
        body = await asyncio.to_thread(
            live_peak, agents, profile, dict(controller.slos_ms), controller.scheduler,
            _interference(profile)[0], dict(controller.serving_ms),
        )  # fmt: skip
        body["seconds"] = round(time.perf_counter() - started, 3)
        self._inputs, self._profile, self._body = inputs, profile, body
        return body


NO_PROFILE = (NoInterference(), "no profile: no predictions")


class InterferenceFor:
    """The interference model the controller plans a shared profile with (by its name; none
    for CPU core sets), and a line that says which. Finding it reads files, so it is worked
    out once per profile (the controller's changes only with a fresh plan), not per call."""

    def __init__(self) -> None:
        self._profile: DeviceProfile | None = None
        self._found: tuple[InterferenceModel, str] = NO_PROFILE

    def __call__(self, profile: DeviceProfile | None) -> tuple[InterferenceModel, str]:
        if profile is None:
            return NO_PROFILE
        if profile is not self._profile:
            self._found, self._profile = interference_for(profile), profile
        return self._found


_interference = InterferenceFor()


def operator_routes(
    controller: Controller,
    dispatcher: Dispatcher,
    arrivals: RateMonitor,
    observed: DispatchMetrics,
    clock: Callable[[], float] = time.monotonic,
    door: Door | None = None,
) -> APIRouter:
    registry = metrics_registry(ClusterCollector(observed, controller, dispatcher, arrivals, clock,
                                                 door))  # fmt: skip
    peaks = PeakCache()
    routes = APIRouter()

    @routes.get(
        "/metrics",
        summary="Prometheus metrics: requests, latency, SLO attainment, queues, batches, rates, "
        "gpu-let busy share, placement",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses()},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @routes.get(
        "/v1/plan",
        summary="The running placement with predicted latencies; with ?peak=true also the "
        "largest equal rate the devices carry (a peak search, cached)",
        responses=error_responses(),
    )
    async def plan(peak: bool = False) -> Response:
        target, profile = controller.target, controller.profile
        interference, note = _interference(profile)
        body: dict[str, Any] = {
            "version": target.version,
            "scheduler": controller.scheduler,
            "switching": controller.switching,
            "profile": None if profile is None else profile.name,
            "interference": note,
            "gpulets": predicted_gpulets(target, profile, controller.slos_ms, interference),
            "explanation": list(target.explanation),
            "unplaced": list(target.unplaced),
        }
        if peak:
            body["peak"] = await peaks.get(controller)
        return Response(codec.dumps(body), media_type="application/json")

    return routes
