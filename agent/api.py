"""The agent's HTTP API for the router: desired gpulets in, batches run, state out.

    GET  /v1/health                      liveness and identity
    GET  /v1/gpulets                     state of every gpulet and the placement version applied
    PUT  /v1/gpulets                     {"version", "gpulets": [GpuletSpec], "retiring": [id]}:
                                         start/stop to match; retiring ones keep draining
    POST /v1/models                      {"models": [name]}: build and profile them (CPU agents;
                                         the router's model load) -> {"profile_key", "built"}
    POST /v1/gpulets/{gpulet_id}/run     frame (header: model, timeout_ms, request_id) -> frame

aiohttp rather than FastAPI: this hop carries every request, and a bare aiohttp handler costs
less CPU per call on a 2-core box. Errors are JSON `{"error": {"code", "message", ...}}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from agent.executor import GpuletExecutor
from agent.model_prep import ModelPreparer
from common import frames
from common.cluster import AgentInfo
from common.errors import BadRequest, GpuletError, NotLoadable
from common.placement import GpuletSpec

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AgentState:
    info: AgentInfo
    supervisor: GpuletExecutor
    applied_version: int = 0
    preparer: ModelPreparer | None = None  # CPU agents measure their own profile


STATE_KEY = web.AppKey("state", AgentState)
SIMULATED_FIELDS = ("simulated", "intended_ms", "achieved_ms")


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: GpuletError) -> web.Response:
    response = json_response(error.to_body(), status=error.status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GpuletError as exc:
        return error_response(exc)
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("agent request failed path=%s", request.path)
        return error_response(GpuletError("internal error in the agent; see its log"))


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return json_response({"ok": True, "agent_id": state.info.agent_id})


async def get_gpulets(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return json_response(
        {
            "agent_id": state.info.agent_id,
            "version": state.applied_version,
            "gpulets": [s.to_json() for s in state.supervisor.statuses()],
        }
    )


async def put_gpulets(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = orjson.loads(await request.read())
        version = int(body["version"])
        specs = [GpuletSpec.from_json(g) for g in body["gpulets"]]
        retiring = [str(g) for g in body.get("retiring", ())]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad gpulet list: {exc!r}") from exc
    foreign = [s.gpulet_id for s in specs if s.agent_id != state.info.agent_id]
    if foreign:
        raise BadRequest(f"gpulets {foreign} are placed on another agent")
    await state.supervisor.apply(specs, retiring)
    if version != state.applied_version:
        logger.info("placement version=%d applied gpulets=%d", version, len(specs))
    state.applied_version = version
    return json_response(
        {"version": version, "gpulets": [s.to_json() for s in state.supervisor.statuses()]},
        status=202,
    )


async def prepare_models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        names = orjson.loads(await request.read())["models"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("models must be a list of names")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadRequest(f'bad model list: {exc}; send {{"models": ["name", ...]}}') from exc
    if state.preparer is None:
        raise NotLoadable(
            f"agent {state.info.agent_id} does not measure profiles: its devices serve a profile "
            "measured beforehand (simulated GPUs: the named profile; NVIDIA GPUs: `gpulet profile "
            "--nvidia`), or it was started with GPULET_PROFILE_ON_START=false"
        )  # fmt: skip
    prepared = await state.preparer.prepare(names)
    return json_response(prepared.to_json())


async def run_batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    received = time.monotonic()
    try:
        message = frames.decode(await request.read())
        timeout_ms = float(message.header["timeout_ms"])
        model = str(message.header["model"])
        shared = message.header.get("shm_batch")
        if shared is not None and not isinstance(shared, str):
            raise TypeError(f"'shm_batch' must name a batch, not {shared!r}")
    except (frames.FrameError, KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad batch frame: {exc}") from exc
    reply = await state.supervisor.run(
        request.match_info["gpulet_id"], model, message.tensors, received + timeout_ms / 1000,
        shared,
    )  # fmt: skip
    header = {
        "compute_ms": reply.header.get("compute_ms"),
        "agent_ms": (time.monotonic() - received) * 1000,
        # Simulated devices say so, with the latency they were meant to take.
        **{k: reply.header[k] for k in SIMULATED_FIELDS if k in reply.header},
    }
    return web.Response(
        body=frames.encode(header, reply.tensors), content_type="application/octet-stream"
    )


def create_app(info: AgentInfo, supervisor: GpuletExecutor) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=1 << 30)
    app[STATE_KEY] = AgentState(info=info, supervisor=supervisor)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/gpulets", get_gpulets)
    app.router.add_put("/v1/gpulets", put_gpulets)
    app.router.add_post("/v1/models", prepare_models)
    app.router.add_post("/v1/gpulets/{gpulet_id}/run", run_batch)
    return app
