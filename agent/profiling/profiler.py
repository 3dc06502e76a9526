"""Profiling real partitions: latency per model x batch x core-set size, measured and kept in Redis.

Flow: `ensure_profile` reads the stored profile of this machine; models whose fingerprint (or
the sizes and batches asked for) no longer match are measured again, each core-set size in a
spawned process pinned to that many cores, one size at a time; the merged profile is stored.
The plan, the run budget and the keys are pure (`agent.profiling.plan`); the measuring processes
live in `agent.profiling.measure`; this module reads, measures and stores.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from agent.local_model import LocalModel, zoo_model
from agent.profiling.measure import (
    MeasureFn,
    ProfileStep,
    ProgressFn,
    measure_profile,
    read_machine_facts,
)
from agent.profiling.plan import (
    BATCHES,
    ProfileRequest,
    machine_key,
    merge_profiles,
    plan_request,
    profile_key,
    stale_models,
)
from common.cluster import DeviceInfo
from common.models import CATALOG
from common.profiles import DeviceProfile
from common.settings import CommonSettings

logger = logging.getLogger(__name__)


class ProfileStore(Protocol):
    """Where profiles live: Redis (common.store.Store), or the disk cache alone (`gpulet
    profile` without Redis: cache.DiskProfiles)."""

    def profile(self, key: str) -> Awaitable[tuple[dict[str, Any], dict[str, Any]] | None]: ...

    def put_profile(
        self, key: str, profile_json: dict[str, Any], meta: dict[str, Any]
    ) -> Awaitable[None]: ...


async def ensure_profile(
    store: ProfileStore | None,
    settings: CommonSettings,
    device: DeviceInfo,
    models: Iterable[str],
    progress: ProgressFn | None = None,
    *,
    sizes: Iterable[int] | None = None,
    batches: Iterable[int] = BATCHES,
    force: bool = False,
    agent_id: str | None = None,
    measure: MeasureFn = measure_profile,
    clock: Callable[[], float] = time.time,
    resolved: Mapping[str, LocalModel] | None = None,
) -> DeviceProfile:
    """This machine's profile of `models`: the stored one while it matches, else measured.

    Only stale models are measured again. Measuring runs in a thread, so the event loop goes
    on; `progress` is called on the loop. With `store` None nothing is read or kept.
    `resolved` gives the models' files, signatures and fingerprints (default: the zoo's).
    """
    names = list(dict.fromkeys(models))
    local = dict(resolved) if resolved is not None else {
        m: zoo_model(settings.model_dir, m) for m in names if m in CATALOG}  # fmt: skip
    request = plan_request(names, device.cores, sizes, batches, known=set(local),
                           max_batches={m: local[m].max_batch for m in names if m in local})
    facts = read_machine_facts(len(device.cores))
    machine = machine_key(facts)
    key = f"cpu:{machine}"
    fingerprints = {m: local[m].fingerprint for m in request.models}
    found = await store.profile(key) if store is not None else None
    stored = DeviceProfile.from_json(found[0]) if found is not None else None
    meta: dict[str, Any] = found[1] if found is not None else {}
    if found is not None and meta.get("machine_key") != machine:
        stored, meta = None, {}  # another machine's facts under our key: trust none of it
    todo = request.models if force else stale_models(meta, request, fingerprints)
    if not todo and stored is not None:
        logger.info("profile reused key=%s models=%s", key, ",".join(request.models))
        return stored
    logger.info(
        "profiling models=%s sizes=%s batches=%s key=%s",
        ",".join(todo), request.sizes, request.batches, key,
    )  # fmt: skip
    started = time.perf_counter()
    measured = await _measure_in_thread(
        measure, plan_request(todo, device.cores, request.sizes, request.batches, request.budget,
                              known=set(local), max_batches=request.max_batches),
        settings.model_dir, f"measured by agent {agent_id or socket.gethostname()} on "
        f"{facts.cpu_model}", progress, {m: local[m] for m in todo},
    )  # fmt: skip
    entries = {m: e for m, e in meta.get("models", {}).items() if m not in todo}
    now = clock()
    for model in todo:
        entries[model] = {
            "fingerprint": fingerprints[model],
            "sizes": list(request.sizes),
            "batches": list(request.batches_for(model)),
            "measured_at": now,
        }
    profile = merge_profiles(stored, entries.keys() - set(todo), measured)
    if store is not None:
        new_meta = {
            "machine_key": machine,
            "machine": asdict(facts),
            "profile_key": profile_key(machine, {m: e["fingerprint"] for m, e in entries.items()}),
            "models": entries,
        }
        await store.put_profile(key, profile.to_json(), new_meta)
    logger.info(
        "profile measured key=%s models=%s s=%.1f stored=%s",
        key, ",".join(todo), time.perf_counter() - started, store is not None,
    )  # fmt: skip
    return profile


async def _measure_in_thread(
    measure: MeasureFn,
    request: ProfileRequest,
    model_dir: Path,
    source: str,
    progress: ProgressFn | None,
    models: Mapping[str, LocalModel],
) -> DeviceProfile:
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def on_loop(step: ProfileStep) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, step)

    try:
        return await asyncio.to_thread(
            measure, request, model_dir, source=source, progress=on_loop, cancel=cancel,
            models=models,
        )  # fmt: skip
    except asyncio.CancelledError:
        cancel.set()  # the thread stops its measuring process and returns soon
        raise
