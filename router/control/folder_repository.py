"""Model management on a repository folder (GPULET_MODEL_REPOSITORY): the index lists every
model and version the folder holds, read afresh, and why one is not served; load reads the model's
folder, publishes its files, has the CPU agents fetch, check and profile them, plans and serves;
unload drains and removes every served version of the model.

Load, in steps:
    1. read the model folder (router/control/model_folder.py): a name, file or config that cannot
       be served is answered 400 naming the file and field, 404 when there is no such folder;
    2. served already with the same files: done (Triton reloads only what changed); with other
       files (a new version, a replaced file): unload the old versions first, then go on;
    3. publish the files (Redis records, and the bytes at GET /v1/model-files/{sha256});
    4. each CPU agent gets them (from its own copy of the folder when the sha256 matches, else
       from the router), checks that ONNX Runtime runs them (400 naming the file if not) and
       measures the profile rows it lacks;
    5. the "what if" plan, then plan and wait for a ready gpu-let of every served version.
The model's served versions are separate served models to the planner and dispatcher: the latest
under the model's name, others as "m@v" (`/v2/models/m/versions/v`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from common.errors import GpuletError, UnknownModel
from common.models import ModelSpec
from common.repository.layout import ModelFile, RepositoryModel
from common.settings import RouterSettings
from common.store import Store
from router.control.control import Controller
from router.control.model_folder import FolderModels, model_of, specs_of
from router.control.repository import (
    UNAVAILABLE,
    LoadParameters,
    ModelState,
    Repository,
    check_rate,
    model_state,
    placement_problem,
)
from router.dispatch.dispatcher import Dispatcher

logger = logging.getLogger(__name__)


class FolderRepository(Repository):
    def __init__(
        self,
        settings: RouterSettings,
        served: dict[str, ModelSpec],
        controller: Controller,
        dispatcher: Dispatcher,
        store: Store,
        folder: FolderModels,
        files: Sequence[ModelFile],
    ) -> None:
        super().__init__(settings, served, controller, dispatcher, store)
        self.folder = folder
        self.files = {f.served_name: f for f in files}  # what is served, by served name

    def index(self, *, ready_only: bool = False) -> list[ModelState]:
        ready = self.controller.table.ready_models()
        rows: list[ModelState] = []
        for row in self.folder.index(self.served):
            if row.served_name is None:
                rows.append(ModelState(row.model, UNAVAILABLE, row.reason, row.version))
                continue
            state = model_state(
                row.served_name, served=row.served_name in self.served,
                ready=row.served_name in ready, loading=row.model in self.loading,
                unloading=row.model in self.unloading, reason=self.reasons.get(row.model, ""),
            )  # fmt: skip
            rows.append(ModelState(row.model, state.state, state.reason, row.version))
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    async def load(self, name: str, parameters: LoadParameters) -> None:
        async with self._lock, self._loading(name):
            model = self.folder.find(name)
            current = sorted(n for n in self.served if model_of(n) == name)
            if current == sorted(f.served_name for f in model.files) and all(
                self.files[f.served_name].sha256 == f.sha256 for f in model.files
            ):
                return  # served already, and nothing changed
            if current:
                logger.info("model reload model=%s: its files changed", name)
                await self._drain_and_remove(name, current)
            await self._load_files(model, parameters)

    async def _load_files(self, model: RepositoryModel, parameters: LoadParameters) -> None:
        controller = self.controller
        slos = {f.served_name: parameters.slo_ms for f in model.files if parameters.slo_ms}
        specs = specs_of(model.files, slos)
        # gpulet.toml's rate counts where the plan takes declared rates; a load's overrides it.
        rate_rps = parameters.rate_rps if parameters.rate_rps is not None else (
            model.options.rate_rps if controller.rates_rps else None)  # fmt: skip
        check_rate(model.name, rate_rps, declared=bool(controller.rates_rps),
                   others=bool(controller.models))  # fmt: skip
        await self.folder.publish(model.files)
        names = list(specs)
        await self._prepare(names)
        all_slos = {**controller.slos_ms, **{n: s.default_slo_ms for n, s in specs.items()}}
        rates = dict(controller.rates_rps)
        if rate_rps is not None:
            rates.update(dict.fromkeys(names, rate_rps))
        for name in names:
            problem = await asyncio.to_thread(
                placement_problem, name, scheduler=controller.scheduler,
                profile=controller.profile, agents=list(controller.agents), slos_ms=all_slos,
                rates_rps=rates, interference=controller.interference,
                retry_after_s=self.settings.retry_after_s,
            )  # fmt: skip
            if problem is not None:
                raise problem
        logger.info("model load model=%s versions=%s", model.name,
                    ",".join(f.version for f in model.files))  # fmt: skip
        for name in names:
            controller.add_model(name, specs[name].default_slo_ms, rate_rps)
        try:
            await self._until(lambda: set(names) <= controller.table.ready_models(),
                              f"{model.name} has no ready gpu-let")  # fmt: skip
        except GpuletError:
            for name in names:
                controller.remove_model(name)
            raise
        await self.store.put_models(specs.values())
        self.served.update(specs)
        self.files.update({f.served_name: f for f in model.files})
        logger.info("model loaded model=%s", model.name)

    async def unload(self, name: str) -> None:
        async with self._lock:
            names = sorted(n for n in self.served if model_of(n) == name)
            if not names:
                loaded = sorted({model_of(n) for n in self.served})
                raise UnknownModel(f"model {name!r} is not loaded; loaded: {', '.join(loaded)}",
                                   models=loaded)  # fmt: skip
            await self._drain_and_remove(name, names)
            for served_name in names:
                self.files.pop(served_name, None)
