"""The router's model repository folder: which models it holds (read afresh on every ask, so a
folder added while running shows up), the files agents fetch by sha256, and the index rows.

Publishing a model's files writes one record per served version to Redis (the agents' way to
learn a repository model: its signature, sha256, size, path in the repository, and the router URL
that serves the bytes) and adds its sha256 to the files `GET /v1/model-files/{sha256}` serves.
Only published files are served: the URL names a hash, never a path.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from common.errors import BadModel, UnknownModel
from common.models import ModelSpec
from common.repository.config import ModelProblem
from common.repository.layout import (
    VERSION_MARK,
    ModelFile,
    RepositoryFolder,
    RepositoryModel,
    check_name,
)
from common.settings import RouterSettings
from common.store import Store

logger = logging.getLogger(__name__)

FILES_PATH = "/v1/model-files"  # + /{sha256}: what agents fetch
ANY_HOST = ("0.0.0.0", "::", "")


def router_url(settings: RouterSettings) -> str:
    """Where agents reach this router: GPULET_ROUTER_ADVERTISE_URL, else host:port (a wildcard
    host is this machine's name)."""
    if settings.router_advertise_url:
        return settings.router_advertise_url.rstrip("/")
    host = socket.gethostname() if settings.router_host in ANY_HOST else settings.router_host
    return f"http://{host}:{settings.router_port}"


def model_of(served_name: str) -> str:
    """The repository model a served name belongs to ("m@2" -> "m")."""
    return served_name.partition(VERSION_MARK)[0]


def bad_model(problem: ModelProblem, model: str) -> BadModel:
    details = {"model": model, "file": problem.file}
    if problem.field:
        details["field"] = problem.field
    return BadModel(str(problem), **details)


@dataclass(frozen=True)
class IndexRow:
    """One (model, version) of the folder: served under `served_name`, or why it is not."""

    model: str
    version: str
    served_name: str | None
    reason: str


class FolderModels:
    def __init__(self, settings: RouterSettings, store: Store) -> None:
        assert settings.model_repository is not None
        self.folder = RepositoryFolder(settings.model_repository, settings.max_model_bytes)
        self.store = store
        self.url = router_url(settings)
        self._paths: dict[str, Path] = {}  # sha256 -> file, once published

    # reading the folder -------------------------------------------------------------------
    def find(self, name: str) -> RepositoryModel:
        """`name`'s folder read afresh: 400 naming file and field when it cannot be served, 404
        when there is no such folder."""
        try:
            check_name(name)
        except ModelProblem as problem:
            raise bad_model(problem, name) from None
        if not self.folder.has(name):
            names = self.folder.names()
            raise UnknownModel(f"no model {name!r} in the repository {self.folder.root}; it has "
                               f"{', '.join(names) or 'nothing'}", models=names)  # fmt: skip
        model = self.folder.scan(name)
        if model.problem is not None:
            raise bad_model(model.problem, name)
        return model

    def names(self) -> list[str]:
        return self.folder.names()

    def start_models(self, named: list[str]) -> list[RepositoryModel]:
        """The models served from the start: those named (each must be servable: a ValueError
        says why not), else every servable one (the others are logged)."""
        models: list[RepositoryModel] = []
        for name in named or self.folder.names():
            if named and not self.folder.has(name):
                raise ValueError(f"GPULET_MODELS names {name}: no such model in "
                                 f"{self.folder.root}; it has {self.folder.names()}")  # fmt: skip
            model = self.folder.scan(name)
            if model.problem is not None:
                if named:
                    raise ValueError(f"GPULET_MODELS names {name}, which cannot be served: "
                                     f"{model.problem}")  # fmt: skip
                logger.warning("model=%s not served: %s", name, model.problem)
                continue
            models.append(model)
        return models

    def index(self, served: Iterable[str]) -> list[IndexRow]:
        """A row per version folder of every model, plus served versions no longer on disk."""
        rows: list[IndexRow] = []
        listed: set[str] = set()
        for model in self.folder.scan_all():
            if model.problem is not None:
                for version in model.versions or ("",):
                    rows.append(IndexRow(model.name, version, None, str(model.problem)))
                continue
            by_version = {f.version: f.served_name for f in model.files}
            for version in model.versions:
                name = by_version.get(version)
                rows.append(IndexRow(model.name, version, name, model.not_served_reason(version)))
                if name is not None:
                    listed.add(name)
        for name in sorted(set(served) - listed):
            rows.append(IndexRow(model_of(name), "", name, "no longer in the repository folder"))
        return rows

    # publishing ---------------------------------------------------------------------------
    async def publish(self, files: Iterable[ModelFile]) -> None:
        chosen = list(files)
        records = {f.served_name: {**f.to_json(), "url": f"{self.url}{FILES_PATH}/{f.sha256}"}
                   for f in chosen}  # fmt: skip
        await self.store.put_model_files(records)
        for f in chosen:
            self._paths[f.sha256] = self.folder.root / f.relpath

    def path_of(self, sha256: str) -> Path | None:
        return self._paths.get(sha256)


def start_rates(models: Sequence[RepositoryModel]) -> dict[str, float]:
    """Declared rates from gpulet.toml, when every model served from the start declares one (a
    plan takes rates for every model or none)."""
    if not models or any(m.options.rate_rps is None for m in models):
        return {}
    return {f.served_name: float(m.options.rate_rps or 0.0) for m in models for f in m.files}


def specs_of(files: Iterable[ModelFile], slos_ms: Mapping[str, float]) -> dict[str, ModelSpec]:
    """Served name -> spec, with the SLOs given (GPULET_SLOS, a load's slo_ms) over the files'."""
    return {f.served_name: replace(f.spec, default_slo_ms=slos_ms.get(f.served_name,
                                                                      f.spec.default_slo_ms))
            for f in files}  # fmt: skip
