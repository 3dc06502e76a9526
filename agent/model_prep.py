"""Preparing models on a CPU agent: build a zoo model's ONNX file if missing, or get a repository
model's file (agent/model_files.py) and check that ONNX Runtime runs it (agent/model_check.py),
then measure what this machine's profile lacks, so that the planner can place them.

At start the agent prepares its GPULET_MODELS; the router's model load asks for one more model
(POST /v1/models). The models asked for since start are kept, so that a later preparation (and
the profile it stores) still covers them. One preparation runs at a time: two would measure on
the same cores and spoil each other's figures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.local_model import LocalModel
from agent.model_check import check_models
from agent.model_files import ModelFiles
from agent.profiling.cache import ensure_agent_profile, profile_key_for
from common.cluster import DeviceInfo
from common.errors import GpuletError, NotLoadable, UnknownModel
from common.models import CATALOG
from common.settings import AgentSettings
from common.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    profile_key: str
    built: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"profile_key": self.profile_key, "built": list(self.built)}


# At start the router may still be publishing the repository models the agent is to serve.
STARTUP_RECORD_WAIT_S = 60.0


def check_names(names: Sequence[str]) -> list[str]:
    """The names asked for, without repeats (each is the catalog's, or resolved as a repository
    model the router published; 404 otherwise)."""
    if not names:
        raise UnknownModel("no models named to prepare", models=sorted(CATALOG))
    return list(dict.fromkeys(names))


def build_files(settings: AgentSettings, names: Sequence[str]) -> list[str]:
    """Build the ONNX files of `names` that are missing (blocking: run it in a thread)."""
    from common.modelzoo.build import build_missing  # torch: only when a model is built

    try:
        return build_missing(settings.model_dir, names, progress=False)
    except RuntimeError as exc:  # the `models` extra (torch, onnx) is not installed here
        raise NotLoadable(f"this agent cannot build {', '.join(names)}: {exc}") from exc
    except Exception as exc:  # torch and the exporter raise many types; one answer here
        logger.exception("model build failed models=%s", ",".join(names))
        raise GpuletError(f"building {', '.join(names)} failed: {type(exc).__name__}: {exc}") \
            from exc  # fmt: skip


@dataclass
class ModelPreparer:
    store: Store
    settings: AgentSettings
    device: DeviceInfo
    agent_id: str
    files: ModelFiles
    added: list[str] = field(default_factory=list)  # asked for by the router since start
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def models(self) -> list[str]:
        return list(dict.fromkeys([*self.settings.model_list(), *self.added]))

    async def prepare(self, names: Sequence[str] | None = None) -> Prepared:
        """Build and profile `names` besides the models already prepared (None: just those);
        return the profile's key (unchanged: one machine, one key; the rows under it grow)."""
        wanted = check_names(names) if names is not None else []
        async with self._lock:
            new = await self.files.resolve(wanted)  # a repository model's file is fetched here
            zoo = [n for n, m in new.items() if not m.repository]
            built = await asyncio.to_thread(build_files, self.settings, zoo) if zoo else []
            await check_models(list(new.values()), self.files.checked)
            known = set(self.models())
            self.added.extend(n for n in wanted if n not in known)
            resolved = await self._resolve_prepared(wait_s=0.0 if names else STARTUP_RECORD_WAIT_S)
            await check_models(list(resolved.values()), self.files.checked)
            if not resolved:  # nothing to serve yet: the router's loads will name the models
                return Prepared(await asyncio.to_thread(profile_key_for, self.device), ())
            try:
                key = await ensure_agent_profile(
                    self.store, self.settings, self.device, self.agent_id, list(resolved),
                    resolved,
                )  # fmt: skip
            except (FileNotFoundError, ValueError) as exc:  # a start-up model never built, ...
                raise NotLoadable(f"cannot profile {', '.join(resolved)}: {exc}") from exc
        if wanted:
            logger.info("models prepared models=%s built=%s key=%s", ",".join(wanted),
                        ",".join(built) or "-", key)  # fmt: skip
        return Prepared(key, tuple(built))

    async def _resolve_prepared(self, *, wait_s: float) -> dict[str, LocalModel]:
        """Every model prepared so far. One added by a load that the router no longer publishes
        (a router started afresh) is dropped, and said so; a start-up model must resolve."""
        resolved: dict[str, LocalModel] = {}
        for name in self.models():
            try:
                resolved[name] = await self.files.resolve_one(name, wait_s=wait_s)
            except UnknownModel:
                if name not in self.added:
                    raise
                self.added.remove(name)
                logger.warning("model=%s is no longer published by the router; not profiled "
                               "again", name)  # fmt: skip
        return resolved
