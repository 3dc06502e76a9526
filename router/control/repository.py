"""Model management (Triton's model repository extension): which models can be loaded, and
loading or unloading one on the running controller and dispatcher.

Load: 1. check the name (the catalog, or the simulated profile's models); 2. on CPU agents, which
measure their own profile, ask each to build the model's ONNX file if missing and to profile it
if their profile lacks it (POST /v1/models on the agent), then read the profile again; 3. ask
the planner "what if"
on the controller's profile, changing nothing (placement_problem): no profile rows, or no plan
that gives it a gpu-let, is answered at once with why; 4. add it to the controller, which plans
afresh (make-before-break keeps the other models serving); 5. wait for a ready gpu-let, then
admit its requests. Unload: stop admitting (404 from then on), wait until its admitted requests
are answered, then remove it from the controller, which plans afresh without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from common.cluster import AgentInfo, measures_own_profile
from common.errors import (
    BadRequest,
    GpuletError,
    NotLoadable,
    SloUnattainable,
    Unavailable,
    UnknownModel,
)
from common.interference import InterferenceModel
from common.models import CATALOG, ModelSpec, spec_for
from common.profiles import DeviceProfile, find_profile
from common.settings import RouterSettings
from common.store import Store
from router.control.control import STATIC, Controller
from router.control.serving_costs import serving_costs
from router.dispatch.dispatcher import Dispatcher
from router.scheduling.live import plan_live
from router.scheduling.schedulers import SearchTooLarge

logger = logging.getLogger(__name__)

# Triton's model states (its repository index answers these).
READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
VERSION = "1"  # the one version every model has (as /v2/models/{m}/versions/1)
NOT_LOADED = "not loaded"
UNLOADED = "unloaded"


@dataclass(frozen=True)
class LoadParameters:
    """What a load request may say about the model: its SLO and expected rate."""

    slo_ms: float | None = None
    rate_rps: float | None = None


@dataclass(frozen=True)
class ModelState:
    name: str
    state: str
    reason: str
    version: str = VERSION

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state,
                "reason": self.reason}  # fmt: skip


def load_parameters(body: bytes) -> LoadParameters:
    """A load body, `{"parameters": {"slo_ms": 50, "rate_rps": 20}}` (both optional; an empty
    body too). Other parameters (Triton's `config`, files) are refused: we cannot honour them."""
    if not body.strip():
        return LoadParameters()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"load body is not JSON: {exc}") from None
    parameters = data.get("parameters", {}) if isinstance(data, dict) else None
    if not isinstance(parameters, dict):
        raise BadRequest('load body: use {"parameters": {"slo_ms": ..., "rate_rps": ...}}')
    extra = sorted(set(parameters) - {"slo_ms", "rate_rps"})
    if extra:
        raise BadRequest(f"load parameters {extra} are not supported; use slo_ms and rate_rps")
    slo_ms = _number(parameters, "slo_ms", minimum=0.0, strict=True)
    rate_rps = _number(parameters, "rate_rps", minimum=0.0, strict=False)
    return LoadParameters(slo_ms, rate_rps)


def _number(
    parameters: Mapping[str, Any], key: str, *, minimum: float, strict: bool
) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum or (
            strict and value == minimum):  # fmt: skip
        bound = ">" if strict else ">="
        raise BadRequest(f"load parameter {key}={value!r}: a number {bound} {minimum:g}")
    return float(value)


def check_rate(name: str, rate_rps: float | None, *, declared: bool, others: bool) -> None:
    """A plan takes declared rates for every model or for none (then it follows the measured
    ones): a load keeps it so."""
    if declared and rate_rps is None:
        raise BadRequest(f"the served models have declared rates (GPULET_RATES): give {name} "
                         "one too, parameters.rate_rps", model=name)  # fmt: skip
    if not declared and others and rate_rps is not None:
        raise BadRequest(f"the served models have no declared rates (the router follows the "
                         f"measured ones): load {name} without parameters.rate_rps, or declare "
                         "GPULET_RATES for every model", model=name)  # fmt: skip


def model_state(
    name: str, *, served: bool, ready: bool, loading: bool, unloading: bool, reason: str
) -> ModelState:
    """One index row: what a model is doing now, and why it is not ready."""
    if unloading:
        return ModelState(name, UNLOADING, "draining its requests")
    if loading:
        return ModelState(name, LOADING, "waiting for a ready gpu-let")
    if served:
        return ModelState(name, READY, "") if ready else \
            ModelState(name, LOADING, "no ready gpu-let yet")  # fmt: skip
    return ModelState(name, UNAVAILABLE, reason or NOT_LOADED)


def placement_problem(
    name: str,
    *,
    scheduler: str,
    profile: DeviceProfile | None,
    agents: Sequence[AgentInfo],
    slos_ms: Mapping[str, float],
    rates_rps: Mapping[str, float],
    interference: InterferenceModel | None,
    retry_after_s: float,
    serving_ms: Mapping[str, float] | None = None,
) -> GpuletError | None:
    """Why the planner cannot give `name` a gpu-let beside the served models (`slos_ms` has
    them all, `name` included); None when it can. Pure: the "what if" before anything changes.

    The static rule places any model, so it has no objection."""
    if scheduler == STATIC:
        return None
    if profile is None:
        return Unavailable("no device profile to plan on yet (agents still measuring theirs, "
                           "or none registered); retry shortly",
                           retry_after_s=retry_after_s)  # fmt: skip
    if name not in profile.models():
        return NotLoadable(
            f"the agents' profile has no rows for {name} (it has {', '.join(profile.models())}); "
            "simulated GPUs serve their named profile's models, and NVIDIA GPUs the models "
            f"measured by `gpulet profile --nvidia`: measure {name} there first",
            model=name, profile_models=list(profile.models()),
        )  # fmt: skip
    try:
        live = plan_live(agents, profile, slos_ms, rates_rps, scheduler, interference=interference,
                         serving_ms=serving_ms)
    except SearchTooLarge as exc:  # `ideal` on a cluster too large to search exhaustively
        return SloUnattainable(f"{scheduler}: {exc}", model=name, slo_ms=slos_ms[name])
    if live is None or not live.placement.gpulets_of(name):
        return SloUnattainable(
            f"{scheduler}: no plan gives {name} a gpu-let at slo_ms={slos_ms[name]:g} beside "
            f"{', '.join(m for m in sorted(slos_ms) if m != name) or 'nothing'} on "
            f"{len(agents)} agent(s); loosen its SLO or add devices",
            model=name, slo_ms=slos_ms[name],
        )  # fmt: skip
    return None


def loadable_models(settings: RouterSettings) -> tuple[str, ...]:
    """The repository's contents: the simulated profile's models, else the catalog."""
    if settings.simulated_profile:
        return find_profile(settings.simulated_profile).models()
    return tuple(sorted(CATALOG))


class Repository:
    """Loads and unloads models; `served` is the app's model set, shared with /v1 and /v2 (a
    request for a model not in it is answered 404)."""

    def __init__(
        self,
        settings: RouterSettings,
        served: dict[str, ModelSpec],
        controller: Controller,
        dispatcher: Dispatcher,
        store: Store,
    ) -> None:
        self.settings = settings
        self.served = served
        self.controller = controller
        self.dispatcher = dispatcher
        self.store = store
        # Listed by the index: what can be served; named in a load: the catalog too, so that
        # a catalog model a simulated profile lacks is answered why (409), not "no such" (404).
        self.listed = frozenset(loadable_models(settings)) | set(served)
        self.known = self.listed | set(CATALOG)
        self.loading: set[str] = set()
        self.unloading: set[str] = set()
        self.reasons: dict[str, str] = {}  # why a model is unavailable: unloaded, or load failed
        self._lock = asyncio.Lock()  # one change of the model set at a time

    def index(self, *, ready_only: bool = False) -> list[ModelState]:
        ready = self.controller.table.ready_models()
        rows = [
            model_state(
                name, served=name in self.served, ready=name in ready,
                loading=name in self.loading, unloading=name in self.unloading,
                reason=self.reasons.get(name, ""),
            )
            for name in sorted(self.listed | set(self.served))
        ]  # fmt: skip
        return [r for r in rows if r.state == READY] if ready_only else rows

    def _check_alone(self, name: str, action: str) -> None:
        """Model load/unload changes this router's model set only: with other routers on the
        cluster they would serve different models, so it is refused (409) while they run."""
        membership = self.controller.membership
        if membership is not None and membership.routers > 1:
            raise NotLoadable(
                f"{membership.routers} routers share this cluster: a model {action} here would "
                f"change this router's models only; set GPULET_MODELS (and GPULET_SLOS) on "
                "every router and restart them one at a time", model=name,
                routers=membership.routers,
            )  # fmt: skip

    def _check_known(self, name: str) -> None:
        if name not in self.known:
            known = sorted(self.known)
            raise UnknownModel(f"no model {name!r} in the repository; it has {', '.join(known)}",
                               models=known)  # fmt: skip

    async def load(self, name: str, parameters: LoadParameters) -> None:
        self._check_known(name)
        self._check_alone(name, "load")
        async with self._lock:
            if name in self.served:
                return  # loaded already (Triton reloads; our model files do not change)
            async with self._loading(name):
                await self._load(name, parameters)

    @contextlib.asynccontextmanager
    async def _loading(self, name: str) -> AsyncIterator[None]:
        """`name` shows LOADING meanwhile; a failure is kept as its index reason, a success
        clears the last one. An unknown name is no model of the index: nothing is kept."""
        self.loading.add(name)
        try:
            yield
        except UnknownModel:
            raise
        except GpuletError as exc:
            self.reasons[name] = f"load failed: {exc.message}"
            raise
        finally:
            self.loading.discard(name)
        self.reasons.pop(name, None)

    async def _load(self, name: str, parameters: LoadParameters) -> None:
        controller = self.controller
        simulated = self.settings.simulated_profile is not None
        spec = spec_for(name, simulated=simulated)
        if parameters.slo_ms is not None:
            spec = replace(spec, default_slo_ms=parameters.slo_ms)
        check_rate(name, parameters.rate_rps, declared=bool(controller.rates_rps),
                   others=bool(controller.models))  # fmt: skip
        if not simulated and name in CATALOG:
            await self._prepare([name])
        slos = {**controller.slos_ms, name: spec.default_slo_ms}
        via_agent = not self.settings.direct_to_workers
        serving_ms = serving_costs({name: spec}, {}, via_agent=via_agent)[name]
        rates = dict(controller.rates_rps)
        if parameters.rate_rps is not None:
            rates[name] = parameters.rate_rps
        problem = await asyncio.to_thread(
            placement_problem, name, scheduler=controller.scheduler, profile=controller.profile,
            agents=list(controller.agents), slos_ms=slos, rates_rps=rates,
            interference=controller.interference, retry_after_s=self.settings.retry_after_s,
            serving_ms={**controller.serving_ms, name: serving_ms},
        )  # fmt: skip
        if problem is not None:
            raise problem
        logger.info("model load model=%s slo_ms=%g", name, spec.default_slo_ms)
        controller.add_model(name, spec.default_slo_ms, parameters.rate_rps, serving_ms)
        try:
            await self._until(lambda: name in controller.table.ready_models(),
                              f"{name} has no ready gpu-let")  # fmt: skip
        except GpuletError:
            controller.remove_model(name)
            raise
        await self.store.put_models([spec])
        self.served[name] = spec
        logger.info("model loaded model=%s", name)

    async def _prepare(self, names: Sequence[str]) -> None:
        """Have every CPU agent build (or fetch) and profile `names` (agents on one machine share
        a profile key: the first measures, the others find the rows stored); then plan on the
        new rows."""
        agents = [a for a in self.controller.agents if measures_own_profile(a.profile_key)]
        if not agents:
            return
        what = ", ".join(names)
        logger.info("model load models=%s: agents %s prepare and profile them", what,
                    ",".join(a.agent_id for a in agents))  # fmt: skip
        timeout_s = self.settings.model_load_timeout_s
        for agent in agents:  # one at a time: they may share cores, and would measure each other
            try:
                await self.controller.client.prepare_models(agent.url, list(names), timeout_s)
            except GpuletError as exc:  # keep its code and status; say which agent and model
                exc.message = f"agent {agent.agent_id} could not prepare {what}: {exc.message}"
                exc.args = (exc.message,)
                raise
        await self.controller.reload_measured_profile()

    async def unload(self, name: str) -> None:
        self._check_known(name)
        self._check_alone(name, "unload")
        async with self._lock:
            if name not in self.served:
                loaded = sorted(self.served)
                raise UnknownModel(f"model {name!r} is not loaded; loaded: {', '.join(loaded)}",
                                   models=loaded)  # fmt: skip
            await self._drain_and_remove(name, [name])

    async def _drain_and_remove(self, model: str, names: Sequence[str]) -> None:
        """Unload served `names` of `model` (its versions): admit no new request, wait until the
        admitted ones are answered, stop planning them and wait until they are not routed."""
        for name in names:
            del self.served[name]  # no new request is admitted from here on
        self.unloading.add(model)
        logger.info("model unload model=%s draining=%d", model,
                    sum(self.dispatcher.active.get(n, 0) for n in names))  # fmt: skip
        try:
            async with asyncio.timeout(self.settings.model_load_timeout_s):
                for name in names:
                    await self.dispatcher.idle(name)
        except TimeoutError:
            logger.warning("model=%s unload: requests still running after %.0fs; removing "
                           "it anyway", model, self.settings.model_load_timeout_s)  # fmt: skip
        finally:
            self.unloading.discard(model)
            for name in names:
                self.controller.remove_model(name)
            self.reasons[model] = UNLOADED

        def gone() -> bool:
            # Not routed, and a placement without it written: a load right after (of other
            # files under the same name) must not find its old gpu-lets still placed.
            placed = {m for g in self.controller.target.gpulets for m in g.model_names}
            return not set(names) & (set(self.controller.table.routes) | placed)

        await self._until(gone, f"{model} is still placed")
        logger.info("model unloaded model=%s", model)

    async def _until(self, done: Callable[[], bool], what: str) -> None:
        """Wait, step by control step, until `done()`; 503 saying `what` after the timeout."""
        timeout_s = self.settings.model_load_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    await self.controller.changed.wait()
        except TimeoutError:
            raise Unavailable(
                f"{what} after {timeout_s:g}s (GPULET_MODEL_LOAD_TIMEOUT_S); see /v1/cluster "
                "for the placement", retry_after_s=self.settings.retry_after_s,
            ) from None  # fmt: skip
