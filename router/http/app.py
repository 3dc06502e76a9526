"""The router's HTTP API (FastAPI): `POST /v1/infer`, models, cluster, health and readiness.

Every answer is a result or `{"error": {"code", "message", ...}}` with the status of
`common.errors`; nothing unexpected leaks a traceback (it is logged with the request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import shared_memory
from common.errors import BadRequest, GpuletError, Unavailable
from common.models import ModelSpec, spec_for
from common.repository.layout import ModelFile
from common.settings import RouterSettings
from common.store import Store
from router.control.control import Controller
from router.control.folder_repository import FolderRepository
from router.control.membership import Membership, Published
from router.control.model_folder import FolderModels, start_rates
from router.control.rates import RateMonitor
from router.control.repository import Repository
from router.control.serving_costs import serving_costs
from router.dispatch.agent_client import AgentClient
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.views import best_latency_ms, plan_view
from router.http import codec, oip, openapi
from router.http.admin import admin_dependencies
from router.http.bodies import read_body
from router.http.failure_log import FailureLog
from router.http.fast_path import RouterApp
from router.http.inflight import Door, InflightLimiter
from router.http.metrics import DispatchMetrics
from router.http.model_file_routes import model_file_routes
from router.http.openapi import error_responses
from router.http.operator_routes import operator_routes
from router.http.repository_routes import repository_routes

logger = logging.getLogger(__name__)

REPLANS_SHOWN = 50  # /v1/cluster lists the latest re-plans
INFER_EXAMPLE = {
    "model": "noop",
    "inputs": {"input": [[0.0] * 16]},
    "slo_ms": 50,
}


def served_models(
    settings: RouterSettings, files: Sequence[ModelFile] = ()
) -> dict[str, ModelSpec]:
    """The served models' specs (a repository's: those of `files`); GPULET_SLOS overrides their
    default SLOs."""
    if settings.model_repository is not None:
        specs = {f.served_name: f.spec for f in files}
    else:
        # Simulated GPUs take their time from the profile: every model takes the token signature.
        simulated = settings.simulated_profile is not None
        specs = {n: spec_for(n, simulated=simulated) for n in settings.model_list()}
    names = list(specs)
    slos = parse_per_model(settings.slos, set(names), "GPULET_SLOS", "ms")
    return {n: replace(s, default_slo_ms=slos.get(n, s.default_slo_ms)) for n, s in specs.items()}


def parse_rates(text: str, models: dict[str, ModelSpec]) -> dict[str, float]:
    """'resnet18=20,noop=500' -> {"resnet18": 20.0, "noop": 500.0}; errors name the fix."""
    return parse_per_model(text, set(models), "GPULET_RATES", "req_per_s")


def parse_per_model(text: str, names: set[str], variable: str, unit: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, raw = part.partition("=")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{variable} part {part!r}: use model={unit}") from None
        if name.strip() not in names or value < 0:
            raise ValueError(
                f"{variable} part {part!r}: model must be one of {sorted(names)}, value >= 0"
            )
        values[name.strip()] = value
    return values


def default_router_id(settings: RouterSettings) -> str:
    """Unique per process: a restarted router is a new member (its predecessor's lease runs
    out rather than being taken over by a namesake)."""
    return f"{socket.gethostname()}-{settings.router_port}-{uuid.uuid4().hex[:6]}"


def _url(settings: RouterSettings) -> str:
    host = "127.0.0.1" if settings.router_host in ("0.0.0.0", "") else settings.router_host
    return f"http://{host}:{settings.router_port}"


def error_response(error: GpuletError, request_id: str | None = None) -> Response:
    body = error.to_body()
    if request_id is not None:
        body["error"].setdefault("request_id", request_id)
    return Response(
        codec.dumps(body), status_code=error.status, media_type="application/json",
        headers=error.headers(),
    )  # fmt: skip


def create_app(
    settings: RouterSettings, *, store: Store, client: AgentClient | None = None
) -> FastAPI:
    # A model repository folder, or the built-in zoo (the catalog, or a simulated profile's).
    folder = FolderModels(settings, store) if settings.model_repository is not None else None
    start = folder.start_models(settings.named_models()) if folder is not None else []
    files = [f for model in start for f in model.files]
    models = served_models(settings, files)
    failures = FailureLog(logger)
    client = client or AgentClient(
        settings.agent_connections, settings.retry_after_s, settings.shared_memory,
        settings.direct_to_workers,
    )  # fmt: skip
    arrivals = RateMonitor()
    router_id = settings.router_id or default_router_id(settings)
    membership = Membership(store, router_id, _url(settings))
    controller = Controller(
        store,
        client,
        {name: spec.default_slo_ms for name, spec in models.items()},
        settings.reconcile_interval_s,
        scheduler=settings.scheduler,
        rates_rps=parse_rates(settings.rates, models) or start_rates(start),
        arrivals=arrivals,
        epoch_s=settings.replan_epoch_s,
        serving_ms=serving_costs(
            models, parse_per_model(settings.serving_cpu_ms, set(models), "GPULET_SERVING_CPU_MS",
                                    "ms"), via_agent=not settings.direct_to_workers),
        membership=membership,
    )
    observed = DispatchMetrics()  # what /metrics counts per request and batch
    dispatcher = Dispatcher(
        client,
        retry_after_s=settings.retry_after_s,
        max_held_bytes=settings.max_queued_bytes,
        work_conserving=settings.batching == "work-conserving",
        views=lambda route: plan_view(route, controller.profile),
        best_latency_ms=lambda model: best_latency_ms(controller.profile, model),
        observer=observed,
    )
    controller.on_table = dispatcher.follow
    controller.in_use = dispatcher.in_use
    dispatcher.on_drained = controller.wake
    dispatcher.capacity_share = lambda: controller.capacity_share
    membership.on_lead = controller.wake  # plan at once on taking the lease over

    def published() -> Published:
        now_ms = time.monotonic() * 1000
        return Published(arrivals.rates(now_ms), arrivals.recent(now_ms),
                         frozenset(dispatcher.in_use()))  # fmt: skip

    async def put_models() -> None:
        await store.put_models(models.values())

    membership.publish = published
    controller.on_store_reset = put_models  # Redis restarted empty: the models' signatures too

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.put_models(models.values())
        if folder is not None:  # agents learn repository models from these records
            await folder.publish(files)
        else:  # a zoo router: no repository record left in Redis shadows a model of its own
            await store.remove_model_files(list(models))
        # Membership first: a router alone takes the lease before its first control step.
        with contextlib.suppress(GpuletError):
            await membership.step()
            # Routes to the gpu-lets already running (a restarted or added router) before it
            # listens: its first requests find them instead of a 503.
            await controller.step(lead=False)
        if settings.shared_memory and (swept := shared_memory.sweep_orphans()):
            logger.info("removed %d /dev/shm batch files of processes gone", swept)
        tasks = [asyncio.create_task(membership.run_forever(), name="membership"),
                 asyncio.create_task(controller.run_forever(), name="control-loop")]  # fmt: skip
        logger.info("router up id=%s models=%s", router_id, ",".join(models))
        try:
            yield
        finally:
            for task in reversed(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await membership.leave()
            await dispatcher.close()
            await client.close()
            logger.info("router stopped")

    app = RouterApp(
        title="gpulet router",
        version="0.1.0",
        lifespan=lifespan,
        description="Multi-model inference under latency SLOs on gpu-lets.",
    )
    app.state.controller = controller
    door = Door(settings.router_backlog_s, settings.retry_after_s)
    app.state.door = door
    app.add_middleware(InflightLimiter, door=door)
    app.include_router(operator_routes(controller, dispatcher, arrivals, observed, door=door))
    app.include_router(oip.build_router(settings, models, dispatcher, controller, arrivals))
    # `models` is the served set, changed in place by model load/unload: /v1 and /v2 read it.
    repository = Repository(settings, models, controller, dispatcher, store) if folder is None \
        else FolderRepository(settings, models, controller, dispatcher, store, folder, files)
    app.include_router(repository_routes(repository, admin_dependencies(settings.admin_token)))
    if folder is not None:
        app.include_router(model_file_routes(folder))
    openapi.install(app)  # validation errors are documented as the 400s they answer

    @app.exception_handler(GpuletError)
    async def on_gpulet_error(request: Request, exc: GpuletError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{exc.detail}: {request.method} {request.url.path}"
        # Starlette's own headers, e.g. a 405's `Allow` (the methods the path answers, RFC 9110).
        headers = dict(exc.headers or {})
        if request.url.path.startswith(oip.PREFIX):  # OIP clients read {"error": "<message>"}
            return oip.plain_error(exc.status_code, code, message, headers)
        body = {"error": {"code": code, "message": message}}
        return Response(codec.dumps(body), status_code=exc.status_code,
                        media_type="application/json", headers=headers)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest(f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error path=%s", request.url.path)
        return error_response(GpuletError("internal error; see the router log"))

    @app.post(
        "/v1/infer",
        summary="Run one request (a batch of one or more items) on a model",
        responses=error_responses(400, 404, 413, 422, 502, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": openapi.V1_INFER_BODY, "example": INFER_EXAMPLE}
                },
            }
        },
    )
    async def infer(request: Request) -> Response:
        received = time.monotonic()
        request_id = uuid.uuid4().hex
        try:
            data = codec.parse_body(await read_body(request, settings.max_body_bytes))
            if isinstance(data.get("id"), str):
                request_id = data["id"]
            parsed = codec.decode_request(data, models, max_batch=settings.max_batch)
            arrivals.record(parsed.model.name, received * 1000)
            slo_ms = parsed.slo_ms or parsed.model.default_slo_ms
            deadline_ms = min(slo_ms * settings.deadline_factor, settings.max_deadline_ms)
            result = await dispatcher.submit(
                parsed.model.name, parsed.inputs, parsed.batch, slo_ms,
                (received * 1000) + deadline_ms, request_id, received_ms=received * 1000,
            )  # fmt: skip
        except GpuletError as exc:
            failures.failed(request_id, exc)
            return error_response(exc, request_id)
        except Exception:
            logger.exception("request_id=%s failed unexpectedly", request_id)
            return error_response(GpuletError("internal error; see the router log"), request_id)
        latency_ms = (time.monotonic() - received) * 1000
        body: dict[str, Any] = {
            "model": parsed.model.name,
            "id": request_id,
            "outputs": codec.encode_outputs(result.outputs, parsed.form, parsed.model),
            "latency_ms": round(latency_ms, 3),
            "gpulet": result.gpulet_id,
            "batch": result.batch_items,
        }
        if result.simulated:
            body["simulated"] = True  # outputs of the right shape, not a model's answer
        return Response(codec.dumps(body), media_type="application/json",
                        headers={"X-Request-Id": request_id})  # fmt: skip

    @app.get(
        "/v1/models",
        summary="Served models, their signatures and readiness",
        responses=error_responses(),
    )
    async def list_models() -> Response:
        ready = controller.table.ready_models()
        rates = arrivals.rates(time.monotonic() * 1000)
        listed = [
            model_json(spec, spec.name in ready, dispatcher.outcomes.get(spec.name),
                       rates.get(spec.name, 0.0))
            for spec in models.values()
        ]  # fmt: skip
        return Response(codec.dumps({"models": listed}), media_type="application/json")

    @app.get(
        "/v1/cluster",
        summary="Agents, devices, gpulets and the placement, from Redis",
        responses=error_responses(503),
    )
    async def cluster() -> Response:
        def learned(gpulet: dict[str, Any]) -> dict[str, Any]:
            """A gpu-let's status with what the dispatcher learned of its models' latency."""
            queue = dispatcher.queues.get(str(gpulet.get("gpulet_id")))
            return {**gpulet, "learned": queue.estimates() if queue is not None else {}}

        agents = await store.agents()
        statuses = await store.gpulet_statuses(a.agent_id for a in agents)
        placement = await store.placement()
        body = {
            "agents": [
                {**a.to_json(), "gpulets": [learned(g.to_json()) for g in
                                            statuses.get(a.agent_id, [])]}  # fmt: skip
                for a in agents
            ],
            "placement": placement.to_json() if placement else None,
            "switching": controller.switching,
            "replans": [asdict(e) for e in controller.events[-REPLANS_SHOWN:]],
            "routers": {
                "self": router_id, "leader": membership.holder, "leading": controller.leading,
                "count": membership.routers, "capacity_share": controller.capacity_share,
                "peers": {k: v.get("url") for k, v in membership.peers.items()},
            },
        }  # fmt: skip
        return Response(codec.dumps(body), media_type="application/json")

    @app.get("/healthz", summary="Liveness", responses=error_responses())
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Ready when every served model has a warm gpulet",
        responses=error_responses(503),
    )
    async def readyz() -> Response:
        missing = sorted(set(models) - controller.table.ready_models())
        if missing:
            return error_response(
                Unavailable(f"models without a ready gpulet: {', '.join(missing)}",
                            not_ready=missing, retry_after_s=settings.retry_after_s)
            )  # fmt: skip
        return Response(codec.dumps({"status": "ready", "models": sorted(models)}),
                        media_type="application/json")  # fmt: skip

    app.serve_directly("/v1/infer", infer, door)
    return app


def model_json(
    spec: ModelSpec,
    ready: bool,
    outcomes: dict[str, int] | None = None,
    measured_rps: float = 0.0,
) -> dict[str, Any]:
    def tensors(ts: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

    return {
        "name": spec.name,
        "description": spec.description,
        "inputs": tensors(spec.inputs),
        "outputs": tensors(spec.outputs),
        "default_slo_ms": spec.default_slo_ms,
        "ready": ready,
        # Answers by outcome ("ok" or an error code) and the smoothed arrival rate.
        "outcomes": dict(outcomes or {}),
        "measured_rps": round(measured_rps, 3),
    }
