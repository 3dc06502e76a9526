"""Preparing models on a CPU agent: build their ONNX files if missing, then measure what this
machine's profile lacks, so that the planner can place them.

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

from agent.profiling.cache import ensure_agent_profile
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


def check_names(names: Sequence[str]) -> list[str]:
    """The names asked for, without repeats; 404 naming the catalog when one is not in it."""
    unknown = sorted({n for n in names if n not in CATALOG})
    if unknown:
        raise UnknownModel(f"no catalog models {unknown}; the catalog has {sorted(CATALOG)}",
                           models=sorted(CATALOG))  # fmt: skip
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
    added: list[str] = field(default_factory=list)  # asked for by the router since start
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def models(self) -> list[str]:
        return list(dict.fromkeys([*self.settings.model_list(), *self.added]))

    async def prepare(self, names: Sequence[str] | None = None) -> Prepared:
        """Build and profile `names` besides the models already prepared (None: just those);
        return the profile's key (unchanged: one machine, one key; the rows under it grow)."""
        wanted = check_names(names) if names is not None else []
        async with self._lock:
            built = await asyncio.to_thread(build_files, self.settings, wanted) if wanted else []
            known = set(self.models())
            self.added.extend(n for n in wanted if n not in known)
            try:
                key = await ensure_agent_profile(self.store, self.settings, self.device,
                                                 self.agent_id, self.models())  # fmt: skip
            except (FileNotFoundError, ValueError) as exc:  # a start-up model never built, ...
                raise NotLoadable(f"cannot profile {', '.join(self.models())}: {exc}") from exc
        if wanted:
            logger.info("models prepared models=%s built=%s key=%s", ",".join(wanted),
                        ",".join(built) or "-", key)  # fmt: skip
        return Prepared(key, tuple(built))
