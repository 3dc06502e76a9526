"""Real workers under a real supervisor, for the integration tests that drive them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.supervisor import Supervisor, WorkerSlot
from common.modelzoo.cache import onnx_path
from common.placement import GpuletModel, GpuletSpec
from common.settings import AgentSettings

CORE = min(os.sched_getaffinity(0))


def spec(gpulet_id: str, *models: str, cores: tuple[int, ...] = (CORE,)) -> GpuletSpec:
    return GpuletSpec(gpulet_id, "agent", "cpu0", cores, tuple(GpuletModel(m) for m in models))


@contextlib.asynccontextmanager
async def running_supervisor(model_dir: Path) -> AsyncIterator[Supervisor]:
    settings = AgentSettings(
        model_dir=model_dir, worker_ping_interval_s=0.2, worker_stop_timeout_s=5.0
    )
    sup = Supervisor(settings)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


async def ready(slot: WorkerSlot, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        await slot.ready.wait()


def in_process(model_dir: Path, model: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path(model_dir, model)), options)
    return list(session.run(None, inputs))
