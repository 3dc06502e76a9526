"""Spawned workers under the supervisor: real processes, real ONNX Runtime, real failures."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from agent.local_model import LocalModel, zoo_model
from agent.supervisor import Supervisor
from common.errors import BackendFailed, DeadlinePassed, Unavailable
from common.settings import AgentSettings
from common.shared_memory import BatchSlots
from tests.support.workers import CORE, in_process, ready, running_supervisor, spec

pytestmark = pytest.mark.timeout(120)
LONG_S = 60.0


@pytest.fixture
async def supervisor(model_dir: Path) -> AsyncIterator[Supervisor]:
    async with running_supervisor(model_dir) as sup:
        yield sup


async def test_outputs_equal_an_in_process_session_of_the_same_file(
    supervisor: Supervisor, model_dir: Path
) -> None:
    await supervisor.apply([spec("g1", "lenet", "bert_mini", "mobilenet_v2")])
    slot = supervisor.slots["g1"]
    await ready(slot)
    rng = np.random.default_rng(7)
    cases = {
        "lenet": {"input": rng.standard_normal((3, 1, 28, 28), dtype=np.float32)},
        "mobilenet_v2": {"input": rng.standard_normal((2, 3, 224, 224), dtype=np.float32)},
        "bert_mini": {
            "input_ids": rng.integers(0, 30522, (2, 128), dtype=np.int64),
            "attention_mask": np.ones((2, 128), dtype=np.int64),
        },
    }
    for model, inputs in cases.items():
        reply = await supervisor.run("g1", model, inputs, time.monotonic() + LONG_S)
        expected = in_process(model_dir, model, inputs)
        got = list(reply.tensors.values())
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
        assert reply.header["compute_ms"] > 0


async def test_worker_runs_pinned_to_its_cores(supervisor: Supervisor) -> None:
    await supervisor.apply([spec("g1", "noop")])
    slot = supervisor.slots["g1"]
    await ready(slot)
    assert slot.process is not None and slot.process.pid is not None
    assert psutil.Process(slot.process.pid).cpu_affinity() == [CORE]


async def test_sigkill_fails_the_inflight_batch_at_once_and_the_worker_restarts(
    supervisor: Supervisor,
) -> None:
    await supervisor.apply([spec("g1", "resnet50", "noop")])
    slot = supervisor.slots["g1"]
    await ready(slot)
    first_pid = slot.process.pid if slot.process else None
    big = {"input": np.zeros((16, 3, 224, 224), dtype=np.float32)}  # hundreds of ms of work
    batch = asyncio.create_task(supervisor.run("g1", "resnet50", big, time.monotonic() + LONG_S))
    # One turn of the loop runs the task up to its first await: the batch is then in flight.
    await asyncio.sleep(0)  # a yield, not a wait; noqa: sleep-ok
    assert slot.pending and first_pid is not None
    killed_at = time.monotonic()
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(BackendFailed, match="died"):
        await batch
    assert time.monotonic() - killed_at < 2.0, "the in-flight batch must fail at once"
    with pytest.raises(Unavailable):
        await supervisor.run("g1", "noop", {"input": np.zeros((1, 16), np.float32)}, LONG_S)
    await ready(slot)
    assert slot.restarts == 1 and slot.process is not None and slot.process.pid != first_pid
    reply = await supervisor.run(
        "g1", "noop", {"input": np.ones((1, 16), np.float32)}, time.monotonic() + LONG_S
    )
    np.testing.assert_array_equal(reply.tensors["output"], np.ones((1, 16), np.float32))


async def test_expired_deadline_is_answered_without_running(supervisor: Supervisor) -> None:
    await supervisor.apply([spec("g1", "noop")])
    await ready(supervisor.slots["g1"])
    with pytest.raises(DeadlinePassed):
        await supervisor.run(
            "g1", "noop", {"input": np.zeros((1, 16), np.float32)}, time.monotonic() - 1
        )


async def test_apply_stops_gpulets_no_longer_wanted(supervisor: Supervisor) -> None:
    await supervisor.apply([spec("g1", "noop"), spec("g2", "lenet")])
    for slot in supervisor.slots.values():
        await ready(slot)
    gone = supervisor.slots["g2"].process
    await supervisor.apply([spec("g1", "noop")])
    assert set(supervisor.slots) == {"g1"}
    assert gone is not None and gone.exitcode is not None
    with pytest.raises(Unavailable, match="no gpulet g2"):
        await supervisor.run("g2", "lenet", {}, time.monotonic() + LONG_S)
    with pytest.raises(Unavailable, match="does not serve"):
        await supervisor.run("g1", "lenet", {}, time.monotonic() + LONG_S)


async def test_missing_model_file_fails_the_gpulet_with_the_fix(tmp_path: Path) -> None:
    sup = Supervisor(AgentSettings(model_dir=tmp_path))
    await sup.start()
    try:
        await sup.apply([spec("g1", "noop")])
        slot = sup.slots["g1"]
        async with asyncio.timeout(10):
            await slot.wait_for(lambda s: s.error is not None)
        assert slot.status().state in ("failed", "restarting")
        assert "gpulet models build" in (slot.error or "")
    finally:
        await sup.close()


class SwappableFiles:
    """A model resolver (agent.local_model.ModelResolver) whose noop can be given another file,
    as a repository model loaded again with a new version is."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.version = "v1"

    async def resolve(
        self, names: Iterable[str], *, wait_s: float = 0.0
    ) -> dict[str, LocalModel]:
        found = {n: zoo_model(self.model_dir, n) for n in names}
        return {n: replace(m, fingerprint=f"{m.fingerprint}-{self.version}")
                for n, m in found.items()}  # fmt: skip

    async def fingerprint(self, name: str) -> str | None:
        return f"{zoo_model(self.model_dir, name).fingerprint}-{self.version}"


async def test_a_model_whose_file_changed_restarts_its_worker_in_place(
    supervisor: Supervisor, model_dir: Path
) -> None:
    files = SwappableFiles(model_dir)
    supervisor.model_files = files
    await supervisor.apply([spec("g1", "noop")])
    await ready(supervisor.slots["g1"])
    first = supervisor.slots["g1"].process
    await supervisor.apply([spec("g1", "noop")])  # same place, same file: kept
    assert supervisor.slots["g1"].process is first
    files.version = "v2"  # loaded again with another file under the same name
    await supervisor.apply([spec("g1", "noop")])
    restarted = supervisor.slots["g1"]
    await ready(restarted)
    assert restarted.process is not first and restarted.fingerprints["noop"].endswith("-v2")


async def test_a_batch_in_shared_memory_is_read_by_the_worker(
    supervisor: Supervisor, model_dir: Path
) -> None:
    await supervisor.apply([spec("g1", "mobilenet_v2")])
    await ready(supervisor.slots["g1"])
    inputs = {"input": np.random.default_rng(3).standard_normal((2, 3, 224, 224), np.float32)}
    slots = BatchSlots()
    try:
        name = slots.write(inputs)
        assert name is not None
        reply = await supervisor.run("g1", "mobilenet_v2", {}, time.monotonic() + LONG_S, name)
        (got,) = reply.tensors.values()
        np.testing.assert_allclose(got, in_process(model_dir, "mobilenet_v2", inputs)[0],
                                   rtol=0, atol=1e-5)  # fmt: skip
        # A batch whose file is gone (its router gave up) fails that batch, not the worker.
        slots.release(name, answered=False)
        with pytest.raises(BackendFailed, match="gone"):
            await supervisor.run("g1", "mobilenet_v2", {}, time.monotonic() + LONG_S, name)
        reply = await supervisor.run("g1", "mobilenet_v2", inputs, time.monotonic() + LONG_S)
        assert reply.tensors
    finally:
        slots.close()
