"""The agent's own profile: reuse it (Redis, then a disk cache), else measure it, then announce.

Redis may be an embedded server that forgets everything when `gpulet up` stops, so the profile
is also kept on disk beside the model cache, keyed like the store: by machine facts, and inside
by each model's fingerprint (`agent.profiler.ensure_profile` re-measures only what changed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import orjson

from agent.profile_measure import read_machine_facts
from agent.profile_plan import machine_key
from agent.profiler import ensure_profile
from common.cluster import CPU_KEY, DeviceInfo
from common.settings import AgentSettings
from common.store import Store

logger = logging.getLogger(__name__)

# Advertised when profiling failed: no profile has this key, so the router uses its static rule.
NO_PROFILE = "none"


def profile_key_for(device: DeviceInfo) -> str:
    return f"{CPU_KEY}{machine_key(read_machine_facts(len(device.cores)))}"


def cache_path(settings: AgentSettings, key: str) -> Path:
    return settings.model_dir.parent / "profiles" / f"{key.replace(':', '-')}.json"


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise ValueError(f"GPULET_PROFILE_BATCHES={text!r}: use e.g. '1,2,4,8'") from None
    if not batches or batches[0] < 1:
        raise ValueError(f"GPULET_PROFILE_BATCHES={text!r}: batches must be >= 1")
    return batches


async def ensure_agent_profile(
    store: Store,
    settings: AgentSettings,
    device: DeviceInfo,
    agent_id: str,
    models: Sequence[str] | None = None,
) -> str:
    """Make sure the store holds this machine's profile of `models` (default: the served
    ones); return its key."""
    key = profile_key_for(device)
    path = cache_path(settings, key)
    if await store.profile(key) is None and path.exists():
        try:
            cached = orjson.loads(path.read_bytes())
            await store.put_profile(key, cached["profile"], cached["meta"])
            logger.info("profile loaded from %s", path)
        except (OSError, orjson.JSONDecodeError, KeyError) as exc:
            logger.warning("profile cache %s unreadable (%s); measuring again", path, exc)
    await ensure_profile(
        store, settings, device, settings.model_list() if models is None else models,
        batches=parse_batches(settings.profile_batches), agent_id=agent_id,
    )  # fmt: skip
    found = await store.profile(key)
    if found is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"profile": found[0], "meta": found[1]}))
        tmp.replace(path)
    return key
