"""A real `gpulet agent --simulated a100-class --devices 4` process: registers, serves, leaves."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from common.cluster import AgentInfo
from common.errors import BackendFailed, NotLoadable, Unavailable
from common.placement import GpuletModel, GpuletSpec
from common.procs import stop_process
from common.profiles import find_profile
from common.store import Store
from router.dispatch.agent_client import AgentClient
from tests.support.agents import SimAgent, spawn_sim_agent

pytestmark = pytest.mark.timeout(90)
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
POLL_S = 0.05
DEVICES = 4
T = TypeVar("T")


@pytest.fixture
def sim_agent(redis_url: str, key_prefix: str, store: Store) -> Iterator[SimAgent]:
    """Depends on `store`, so the agent stops (and deregisters) before the store checks keys."""
    agent = spawn_sim_agent(redis_url, key_prefix, DEVICES)
    try:
        yield agent
    finally:
        assert stop_process(agent.process, timeout_s=10.0) == 0, "the agent must stop cleanly"


async def eventually(
    probe: Callable[[], Awaitable[T | None]], process: subprocess.Popen[bytes], what: str
) -> T:
    """Poll an observable condition until it holds, failing fast if the agent dies."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        value = await probe()
        if value:
            return value
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {START_TIMEOUT_S:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_S)  # polls a condition with a deadline; noqa: sleep-ok


@pytest.fixture
async def client() -> AsyncIterator[AgentClient]:
    client = AgentClient(connections=8)
    try:
        yield client
    finally:
        await client.close()


async def test_a_simulated_agent_registers_its_gpus_and_serves_batches(
    sim_agent: SimAgent, store: Store, client: AgentClient
) -> None:
    async def registered() -> AgentInfo | None:
        return next((a for a in await store.agents() if a.agent_id == sim_agent.agent_id), None)

    info = await eventually(registered, sim_agent.process, "the agent in Redis")
    profile = find_profile("a100-class")
    assert [(d.device_id, d.kind) for d in info.devices] == [
        (f"sim{i}", "simulated") for i in range(DEVICES)
    ]
    assert {d.memory_bytes for d in info.devices} == {int(profile.memory_mb * 1024 * 1024)}

    def gpulet(gpulet_id: str, device: str, size: float, model: str) -> GpuletSpec:
        return GpuletSpec(gpulet_id, sim_agent.agent_id, device, (), (GpuletModel(model),), size)

    applied = await client.set_gpulets(
        sim_agent.url,
        1,
        [gpulet("a", "sim1", 100.0, "vgg16"), gpulet("b", "sim2", 50.0, "resnet50")],
    )
    assert {g["gpulet_id"]: g["state"] for g in applied["gpulets"]} == {"a": "ready", "b": "ready"}

    # Inputs are not checked against the profiled model: only the batch axis matters.
    images = {"input": np.zeros((4, 3, 16, 16), np.float32)}
    reply = await client.run(sim_agent.url, "a", "vgg16", images, 10.0, "req-1")
    assert reply.tensors["output"].shape == (4, 1)  # a token per item
    assert reply.tensors["output"].dtype == np.float32
    # alone on its GPU: the profile's latency exactly, never less, late by at most a margin
    intended_ms = profile.latency_ms("vgg16", 4, 100.0)
    assert intended_ms <= reply.header["compute_ms"] < intended_ms + 100

    with pytest.raises(BackendFailed, match="not 128"):
        await client.run(sim_agent.url, "b", "resnet50", {"input": np.zeros((128, 1))}, 10.0, "r2")
    with pytest.raises(Unavailable, match="no gpulet zz"):
        await client.run(sim_agent.url, "zz", "resnet50", images, 10.0, "req-3")

    async def heartbeat_shows_ready() -> bool:
        statuses = (await store.gpulet_statuses([sim_agent.agent_id])).get(sim_agent.agent_id, [])
        return {s.gpulet_id: s.state for s in statuses} == {"a": "ready", "b": "ready"}

    await eventually(heartbeat_shows_ready, sim_agent.process, "gpulet states in the heartbeat")


async def test_a_simulated_agent_refuses_to_prepare_models_and_says_why(
    sim_agent: SimAgent, store: Store, client: AgentClient
) -> None:
    async def registered() -> AgentInfo | None:
        return next((a for a in await store.agents() if a.agent_id == sim_agent.agent_id), None)

    await eventually(registered, sim_agent.process, "the agent in Redis")
    with pytest.raises(NotLoadable, match="does not measure profiles"):
        await client.prepare_models(sim_agent.url, ["noop"], 10.0)
    session = client.session
    async with session.post(f"{sim_agent.url}/v1/models", data=b'{"models": "noop"}') as answer:
        assert answer.status == 400
        assert "models must be a list" in (await answer.json())["error"]["message"]
