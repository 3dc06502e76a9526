"""Shared fixtures: a real Redis found or started as the product does, built models, leak checks."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from common import redis_server
from common.models import model_names
from common.settings import CommonSettings
from common.store import Store


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where NVML (or nvidia-smi) finds an NVIDIA GPU; elsewhere they
    skip, saying what was missing. Asking NVML loads no CUDA library into this process."""
    wanted = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not wanted:
        return
    from agent.nvidia.backend import read_host_gpus
    from agent.nvidia.nvml import NvmlError

    try:
        found = bool(read_host_gpus()[0])
        reason = "no NVIDIA GPU listed"
    except NvmlError as exc:
        found, reason = False, str(exc)
    if not found:
        for item in wanted:
            item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL / GPULET_REDIS_URL if set, else redis-server on PATH, else embedded Valkey."""
    handle = redis_server.resolve(os.environ.get("GPULET_REDIS_URL") or os.environ.get("REDIS_URL"))
    try:
        yield handle.url
    finally:
        handle.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"gpulet-test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    """A store under a prefix of its own; at teardown nothing may write under it any more."""
    store = Store.from_url(redis_url, key_prefix)
    try:
        yield store
    finally:
        await store.purge()
        # A leaked background writer (e.g. a heartbeat task) would re-create keys here.
        await asyncio.sleep(0)  # let pending tasks run once; noqa: sleep-ok
        leaked = await store.keys()
        await store.purge()
        await store.close()
        assert leaked == [], f"keys written after the test ended: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    current = asyncio.current_task()
    leaked = [t for t in leaked if t is not current]
    assert not leaked, f"tasks left running: {[t.get_name() for t in leaked]}"


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leaked = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before and _alive(p) and not _is_resource_tracker(p)
    ]
    for p in leaked:
        p.kill()
    assert not leaked, f"processes left running: {[(p.pid, p.name()) for p in leaked]}"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """Every catalog model built (once; rebuilt only when missing or stale)."""
    from common.modelzoo.build import build_missing

    directory = CommonSettings().model_dir
    build_missing(directory, model_names(), progress=False)
    return directory


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's own helper, started once by the first spawn and kept for the session."""
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False
