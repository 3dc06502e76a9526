"""The agent's own profile: reuse it (Redis, then a disk cache), else measure it, then announce.

Redis may be an embedded server that forgets everything when `gpulet up` stops, so the profile
is also kept on disk beside the model cache, keyed like the store: by machine facts, and inside
by each model's fingerprint (`agent.profiling.profiler.ensure_profile` re-measures only what
changed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from agent.local_model import LocalModel
from agent.profiling.measure import read_machine_facts
from agent.profiling.plan import machine_key
from agent.profiling.profiler import ensure_profile
from common.cluster import CPU_KEY, DeviceInfo
from common.settings import AgentSettings, CommonSettings
from common.store import Store

logger = logging.getLogger(__name__)

# Advertised when profiling failed: no profile has this key, so the router uses its static rule.
NO_PROFILE = "none"


def profile_key_for(device: DeviceInfo) -> str:
    return f"{CPU_KEY}{machine_key(read_machine_facts(len(device.cores)))}"


def cache_path(settings: CommonSettings, key: str) -> Path:
    return settings.model_dir.parent / "profiles" / f"{key.replace(':', '-')}.json"


def read_cached(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(profile, meta) from a disk cache file; raises OSError, orjson.JSONDecodeError or
    KeyError when it is missing or unreadable."""
    cached = orjson.loads(path.read_bytes())
    return cached["profile"], cached["meta"]


def write_cached(path: Path, profile: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a disk cache file whole (temp file, then rename): an agent starting meanwhile
    reads the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"profile": profile, "meta": meta}))
    tmp.replace(path)


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise ValueError(f"GPULET_PROFILE_BATCHES={text!r}: use e.g. '1,2,4,8'") from None
    if not batches or batches[0] < 1:
        raise ValueError(f"GPULET_PROFILE_BATCHES={text!r}: batches must be >= 1")
    return batches


class DiskProfiles:
    """The disk cache as a profile store, for a process without Redis (`gpulet profile`): what
    it measures is what the agents on this machine find when they start."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def profile(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        try:
            return read_cached(self.path)
        except FileNotFoundError:
            return None

    async def put_profile(
        self, key: str, profile_json: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        write_cached(self.path, profile_json, meta)


async def ensure_agent_profile(
    store: Store,
    settings: AgentSettings,
    device: DeviceInfo,
    agent_id: str,
    models: Sequence[str] | None = None,
    resolved: Mapping[str, LocalModel] | None = None,
) -> str:
    """Make sure the store holds this machine's profile of `models` (default: the served
    ones; `resolved`: their files, default the zoo's); return its key."""
    key = profile_key_for(device)
    path = cache_path(settings, key)
    if await store.profile(key) is None and path.exists():
        try:
            await store.put_profile(key, *read_cached(path))
            logger.info("profile loaded from %s", path)
        except (OSError, orjson.JSONDecodeError, KeyError) as exc:
            logger.warning("profile cache %s unreadable (%s); measuring again", path, exc)
    await ensure_profile(
        store, settings, device, settings.model_list() if models is None else models,
        batches=parse_batches(settings.profile_batches), agent_id=agent_id, resolved=resolved,
    )  # fmt: skip
    found = await store.profile(key)
    if found is not None:
        write_cached(path, found[0], found[1])
    return key


async def republish_profile(store: Store, settings: AgentSettings, key: str | None) -> bool:
    """Put the profile under `key` back into Redis from the disk cache when Redis lost it (it
    restarted empty): routers that start later, or read it again, find it. True when written.
    Keys with no disk cache (simulated GPUs, shared profiles by name) have nothing to put."""
    if not key or key == NO_PROFILE:
        return False
    path = cache_path(settings, key)
    if not path.exists() or await store.profile(key) is not None:
        return False
    try:
        await store.put_profile(key, *read_cached(path))
    except (OSError, orjson.JSONDecodeError, KeyError) as exc:
        logger.warning("profile cache %s unreadable (%s); not published again", path, exc)
        return False
    logger.info("profile key=%s published again from %s", key, path)
    return True
