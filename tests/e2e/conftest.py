"""End-to-end fixtures: router and agent as real processes, under a key prefix of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.models import model_names
from tests.support.system import RunningSystem

BODY_LIMIT_BYTES = 2_000_000  # small enough to test 413, large enough for a base64 image


def purge_prefix(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            client.delete(*keys)
        return keys
    finally:
        client.close()


def running(
    redis_url: str, model_dir: Path, *, ready: bool = True, **options: object
) -> Iterator[RunningSystem]:
    prefix = f"gpulet-e2e-{uuid.uuid4().hex[:10]}:"
    system = RunningSystem(redis_url, prefix, model_dir, **options)  # type: ignore[arg-type]
    try:
        system.start()
        if ready:
            system.wait_ready()
        yield system
    finally:
        system.stop()
        purge_prefix(redis_url, prefix)
        # Stopped agents deregister; nothing may write under the prefix once they are gone.
        assert purge_prefix(redis_url, prefix) == []


@pytest.fixture(scope="module")
def system(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url,
        model_dir,
        models=tuple(model_names()),
        router_env={"GPULET_MAX_BODY_BYTES": str(BODY_LIMIT_BYTES)},
    )
