"""The router's direct path: batches on a real worker's own socket, beside its agent's path."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from agent.api import create_app
from agent.supervisor import Supervisor
from common import frames
from common.cluster import AgentInfo
from common.errors import BackendFailed, Unavailable
from common.shared_memory import BatchSlots
from common.stream import StreamClosed, read_message
from router.dispatch.agent_client import AgentClient
from router.dispatch.worker_link import NoDirectPath, WorkerLinks
from tests.support.workers import in_process, ready, running_supervisor, spec

pytestmark = pytest.mark.timeout(120)
LONG_S = 60.0
NOOP = {"input": np.arange(16, dtype=np.float32).reshape(1, 16)}


@pytest.fixture
async def supervisor(model_dir: Path) -> AsyncIterator[Supervisor]:
    async with running_supervisor(model_dir) as sup:
        yield sup


@pytest.fixture
async def links() -> AsyncIterator[WorkerLinks]:
    links = WorkerLinks()
    try:
        yield links
    finally:
        await links.close()


async def started(supervisor: Supervisor, gpulet_id: str, *models: str) -> str:
    """The gpulet running `models`, ready; its worker's own socket."""
    await supervisor.apply([spec(gpulet_id, *models)])
    await ready(supervisor.slots[gpulet_id])
    return direct_socket(supervisor, gpulet_id)


async def linked(links: WorkerLinks, gpulet_id: str, path: str) -> bool:
    """Told of `path` as the gpulet's, as the router is by the agent's report; opened?"""
    links.know({gpulet_id: path})
    async with asyncio.timeout(10):
        return await links.wait_open(path)


def direct_socket(supervisor: Supervisor, gpulet_id: str) -> str:
    (status,) = [s for s in supervisor.statuses() if s.gpulet_id == gpulet_id]
    assert status.state == "ready" and status.direct_socket is not None
    return status.direct_socket


def assert_outputs(reply: frames.Frame, expected: list[np.ndarray]) -> None:
    got = list(reply.tensors.values())
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


async def test_batches_on_the_worker_socket_answer_as_in_process_beside_the_agents_path(
    supervisor: Supervisor, links: WorkerLinks, model_dir: Path
) -> None:
    path = await started(supervisor, "g1", "lenet", "mobilenet_v2")
    assert await linked(links, "g1", path)
    rng = np.random.default_rng(11)
    lenet = {"input": rng.standard_normal((3, 1, 28, 28), dtype=np.float32)}
    mobile = {"input": rng.standard_normal((2, 3, 224, 224), dtype=np.float32)}
    # Two batches pipelined on the router's connection and one through the agent, at once.
    first, second, via_agent = await asyncio.gather(
        links.run(path, "g1", "lenet", lenet, LONG_S, {}),
        links.run(path, "g1", "mobilenet_v2", mobile, LONG_S, {}),
        supervisor.run("g1", "lenet", lenet, time.monotonic() + LONG_S),
    )
    assert_outputs(first, in_process(model_dir, "lenet", lenet))
    assert_outputs(second, in_process(model_dir, "mobilenet_v2", mobile))
    assert_outputs(via_agent, in_process(model_dir, "lenet", lenet))
    assert first.header["compute_ms"] > 0
    slots = BatchSlots()
    try:
        name = slots.write(mobile)
        assert name is not None
        shared = await links.run(path, "g1", "mobilenet_v2", None, LONG_S, {"shm_batch": name})
        assert_outputs(shared, in_process(model_dir, "mobilenet_v2", mobile))
    finally:
        slots.close()
    with pytest.raises(Unavailable, match="not loaded"):  # the worker's coded error
        await links.run(path, "g1", "noop", NOOP, LONG_S, {})


async def test_a_socket_out_of_reach_or_of_another_gpulet_is_not_used(
    supervisor: Supervisor, links: WorkerLinks, tmp_path: Path
) -> None:
    missing = str(tmp_path / "none.sock")
    assert not await linked(links, "g1", missing)
    assert not links.usable(missing)
    with pytest.raises(NoDirectPath):
        await links.run(missing, "g1", "noop", NOOP, LONG_S, {})
    path = await started(supervisor, "g1", "noop")
    assert not await linked(links, "g2", path)  # the worker's hello names g1
    assert not links.usable(path)  # for good: a worker's socket path is never reused
    fresh = WorkerLinks()
    try:
        assert await linked(fresh, "g1", path)
        reply = await fresh.run(path, "g1", "noop", NOOP, LONG_S, {})
        np.testing.assert_array_equal(reply.tensors["output"], NOOP["input"])
    finally:
        await fresh.close()


async def test_a_batch_never_waits_for_a_link_still_opening(
    supervisor: Supervisor, links: WorkerLinks
) -> None:
    path = await started(supervisor, "g1", "noop")
    links.know({"g1": path})  # the link opens in the background from here
    with pytest.raises(NoDirectPath, match="still opening"):  # the agent takes this one
        await links.run(path, "g1", "noop", NOOP, LONG_S, {})
    assert links.usable(path)
    async with asyncio.timeout(10):
        assert await links.wait_open(path)
    reply = await links.run(path, "g1", "noop", NOOP, LONG_S, {})
    np.testing.assert_array_equal(reply.tensors["output"], NOOP["input"])


async def test_a_killed_worker_fails_its_batch_at_once_and_its_successor_listens_elsewhere(
    supervisor: Supervisor, links: WorkerLinks
) -> None:
    old = await started(supervisor, "g1", "resnet50", "noop")
    assert await linked(links, "g1", old)
    slot = supervisor.slots["g1"]
    assert slot.process is not None and slot.process.pid is not None
    big = {"input": np.zeros((16, 3, 224, 224), dtype=np.float32)}  # hundreds of ms of work
    batch = asyncio.create_task(links.run(old, "g1", "resnet50", big, LONG_S, {}))
    await asyncio.sleep(0)  # a yield, not a wait: the batch is written; noqa: sleep-ok
    killed_at = time.monotonic()
    os.kill(slot.process.pid, signal.SIGKILL)
    with pytest.raises(BackendFailed, match="went away"):
        await batch
    assert time.monotonic() - killed_at < 2.0, "the in-flight batch must fail at once"
    async with asyncio.timeout(60):
        await slot.wait_for(lambda s: s.state == "ready" and s.restarts == 1)
    new = direct_socket(supervisor, "g1")
    assert new != old and os.path.basename(old) not in os.listdir(os.path.dirname(old))
    with pytest.raises(NoDirectPath):
        await links.run(old, "g1", "noop", NOOP, LONG_S, {})
    assert await linked(links, "g1", new)
    reply = await links.run(new, "g1", "noop", NOOP, LONG_S, {})
    np.testing.assert_array_equal(reply.tensors["output"], NOOP["input"])


async def test_a_router_can_neither_stop_the_worker_nor_break_it_with_a_torn_frame(
    supervisor: Supervisor, links: WorkerLinks
) -> None:
    path = await started(supervisor, "g1", "noop")
    assert await linked(links, "g1", path)
    reader, writer = await asyncio.open_unix_connection(path)
    hello = frames.decode(await read_message(reader)).header
    assert hello["gpulet_id"] == "g1"
    stop = frames.encode({"op": "stop"})
    torn = frames.encode({"op": "run", "model": "noop", "id": 1}, NOOP)
    writer.write(len(stop).to_bytes(8, "little") + stop)
    writer.write(len(torn).to_bytes(8, "little") + torn[: len(torn) // 2])
    writer.close()
    with pytest.raises(StreamClosed):  # the worker dropped that connection only
        await read_message(reader)
    reply = await links.run(path, "g1", "noop", NOOP, LONG_S, {})
    np.testing.assert_array_equal(reply.tensors["output"], NOOP["input"])
    via_agent = await supervisor.run("g1", "noop", NOOP, time.monotonic() + LONG_S)
    np.testing.assert_array_equal(via_agent.tensors["output"], NOOP["input"])
    assert supervisor.slots["g1"].restarts == 0


@pytest.mark.parametrize("direct", [True, False])
async def test_the_client_goes_to_the_worker_when_it_can_else_through_the_agent(
    supervisor: Supervisor, tmp_path: Path, direct: bool
) -> None:
    path = await started(supervisor, "g1", "noop")
    info = AgentInfo("agent", "", socket.gethostname(), os.getpid(), (), 0.0)
    server = TestServer(create_app(info, supervisor), host="127.0.0.1")
    await server.start_server()
    client = AgentClient(4, direct_to_workers=direct)
    url = str(server.make_url("")).rstrip("/")
    try:
        ways = [str(tmp_path / "elsewhere.sock"), path]  # another container's path, then ours
        for way in ways:
            client.know_gpulets(url, [{"gpulet_id": "g1", "state": "ready", "direct_socket": way}])
            async with asyncio.timeout(10):
                assert await client.wait_direct(url, "g1") == (direct and way == path)
            reply = await client.run(url, "g1", "noop", NOOP, LONG_S, "r1")
            np.testing.assert_array_equal(reply.tensors["output"], NOOP["input"])
        sent = {key: n for key, n in client.batches_sent.items() if n}
        assert sent == ({("agent", "inline"): 1, ("worker", "inline"): 1} if direct
                        else {("agent", "inline"): 2})  # fmt: skip
    finally:
        await client.close()
        await server.close()
