"""GPU workers without a GPU: the environment lands before any CUDA library, an engine that
cannot run fails the gpulet in words, the PyTorch engine computes what the ONNX files do, and
GPU profiling's measuring processes run (on ONNX Runtime's CPU engine) under their MPS share."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.nvidia.engines import torch_sessions
from agent.nvidia.profile_grid import PairPoint, plan_gpu_request
from agent.nvidia.profile_run import GpuTarget, measure_pairs, measure_solo
from agent.profiling.measure import profile_inputs
from agent.profiling.plan import RunBudget
from agent.supervisor import Supervisor
from agent.worker import WorkerConfig, WorkerSetup
from common.models import CATALOG
from common.modelzoo.cache import onnx_path
from common.placement import GpuletModel, GpuletSpec
from common.settings import AgentSettings
from tests.support.probes import cuda_loaded_on_arrival

pytestmark = pytest.mark.timeout(120)
BINDING = (("CUDA_VISIBLE_DEVICES", "GPU-fake-0001"), ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "40"))
WAIT_S = 60.0


def test_a_spawned_worker_has_loaded_no_cuda_library_when_it_applies_its_env() -> None:
    config = WorkerConfig("g", 1, "/nowhere", (), ("resnet18",), ("/x.onnx",), env=BINDING,
                          gpu_engine="torch")  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=cuda_loaded_on_arrival, args=(sender, pickle.dumps(config)))
    process.start()
    sender.close()
    try:
        assert receiver.poll(WAIT_S)
        found = receiver.recv()
    finally:
        process.join(WAIT_S)
    assert found == {"modules": [], "libraries": []}


@pytest.fixture
async def gpu_supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    settings = AgentSettings(model_dir=tmp_path, worker_ping_interval_s=0.2)
    sup = Supervisor(settings, worker_setup=lambda spec: WorkerSetup(BINDING, "onnxruntime"))
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


async def test_a_gpu_engine_that_cannot_run_fails_the_gpulet_saying_why(
    gpu_supervisor: Supervisor,
) -> None:
    spec = GpuletSpec("g0", "agent", "gpu0", (), (GpuletModel("resnet18"),), size=40.0)
    await gpu_supervisor.apply([spec])
    slot = gpu_supervisor.slots["g0"]
    async with asyncio.timeout(WAIT_S):
        await slot.wait_for(lambda s: s.error is not None)
    (status,) = gpu_supervisor.statuses()
    assert status.state in ("failed", "restarting") and status.engine is None
    assert status.error is not None and "no CUDAExecutionProvider" in status.error
    assert "CUDA_VISIBLE_DEVICES='GPU-fake-0001'" in status.error


async def test_a_cpu_worker_reports_its_engine(model_dir: Path) -> None:
    sup = Supervisor(AgentSettings(model_dir=model_dir))
    await sup.start()
    try:
        await sup.apply([GpuletSpec("c0", "agent", "cpu0", (min(os.sched_getaffinity(0)),),
                                    (GpuletModel("noop"),))])  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            await sup.slots["c0"].ready.wait()
        (status,) = sup.statuses()
        assert (status.engine, status.gpu_memory_bytes) == ("onnxruntime-cpu", 0)
    finally:
        await sup.close()


@pytest.mark.parametrize("model", ["lenet", "mobilenet_v2", "bert_mini"])
def test_torch_engine_answers_as_the_onnx_file_does(model_dir: Path, model: str) -> None:
    """The engine of hosts without onnxruntime-gpu, here on the CPU: same nets, same seed."""
    (session,) = torch_sessions((model,), "cpu", 1).values()
    onnx = ort.InferenceSession(str(onnx_path(model_dir, model)),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = profile_inputs(CATALOG[model], 3)
    (got,) = session.run(None, feeds)
    (want,) = onnx.run(None, feeds)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_profiling_processes_measure_each_size_under_its_share(model_dir: Path) -> None:
    request = plan_gpu_request(["noop"], (50.0, 100.0), (1, 2), pair_count=1,
                               budget=RunBudget(point_budget_ms=50.0))  # fmt: skip
    assert request.pairs == (PairPoint("noop", 1, 50.0, "noop", 1, 50.0),)
    target = GpuTarget({"CUDA_VISIBLE_DEVICES": "GPU-fake-0001"}, None, model_dir)
    seen: list[tuple[str, float, int, float | None, str]] = []
    points, engine = measure_solo(request, target, seen.append)
    assert engine == "onnxruntime-cpu"
    assert sorted(points) == [("noop", 50.0), ("noop", 100.0)]
    assert all([b for b, _ in p] == [1, 2] and all(ms > 0 for _, ms in p)
               for p in points.values())  # fmt: skip
    assert [(s[1], s[2]) for s in seen] == [(50.0, 1), (50.0, 2), (100.0, 1), (100.0, 2)]
    (pair,) = measure_pairs(request, target)
    assert pair.pair == request.pairs[0]
    assert pair.latency_a_ms > 0 and pair.latency_b_ms > 0 and pair.std_a_ms >= 0
    skipped: list[PairPoint] = []
    assert measure_pairs(request, target, lambda _, p: skipped.append(p),
                         deadline=time.monotonic()) == []  # fmt: skip
    assert skipped == []  # past the deadline no pair starts (nor is reported as measured)
