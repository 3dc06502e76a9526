"""A real `gpulet agent` on a faked NVIDIA host: the fake `pynvml` module first on PYTHONPATH
and the fake `nvidia-cuda-mps-control` first on PATH; everything else is the product.

The agent registers its GPU as an MPS device, the router's controller plans it on the shared
profile the agent names (GPULET_NVIDIA_PROFILE), the agent starts a worker bound to the GPU and
its MPS share, and, there being no CUDA here, the worker's engine fails in words that show the
environment it was given; stopping the agent stops the MPS daemon it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from agent.nvidia.mps import PID_FILE
from common.cluster import AgentInfo
from common.placement import GpuletModel, GpuletSpec
from common.procs import stop_process
from common.store import Store
from router.control.control import Controller
from router.dispatch.agent_client import AgentClient
from tests.support.agents import SimAgent, spawn_agent
from tests.support.fake_mps import alive, calls, install_fake_mps_control, kill_daemon

pytestmark = pytest.mark.timeout(120)
SUPPORT = Path(__file__).resolve().parents[1] / "support"
GPU_UUID = "GPU-fake-0001"
WAIT_S = 60.0
POLL_S = 0.1
MPS_SIZES = {20.0, 40.0, 50.0, 60.0, 80.0, 100.0}
T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T | None]], agent: SimAgent, what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while not (value := await probe()):
        assert agent.process.poll() is None, f"the agent exited before {what}"
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S:.0f}s"
        await asyncio.sleep(POLL_S)  # polls a condition with a deadline; noqa: sleep-ok
    return value


def nvidia_env(tmp_path: Path, with_mps: bool) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if with_mps:
        install_fake_mps_control(bin_dir)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT / "fake_pynvml"),
                                       os.environ.get("PYTHONPATH", "")]),  # fmt: skip
        "FAKE_NVML_GPUS": json.dumps([{"uuid": GPU_UUID}]),
        "FAKE_MPS_CALLS": str(tmp_path / "calls.jsonl"),
        "GPULET_DEVICE_KIND": "nvidia",
        "GPULET_NVIDIA_PROFILE": "a100-class",
        "GPULET_MPS_PIPE_DIR": str(tmp_path / "pipe"),
        "GPULET_MPS_LOG_DIR": str(tmp_path / "log"),
        "GPULET_GPU_ENGINE": "onnxruntime",  # fails fast here: no CUDA provider
    }


async def registered(store: Store, agent: SimAgent) -> AgentInfo:
    async def probe() -> AgentInfo | None:
        return next((a for a in await store.agents() if a.agent_id == agent.agent_id), None)

    return await until(probe, agent, "registration")


async def test_mps_gpu_is_planned_bound_and_its_daemon_stopped(
    redis_url: str, key_prefix: str, store: Store, tmp_path: Path
) -> None:
    agent = spawn_agent(redis_url, key_prefix, [], env=nvidia_env(tmp_path, with_mps=True))
    client = AgentClient(connections=4)
    try:
        info = await registered(store, agent)
        (device,) = info.devices
        assert (device.device_id, device.kind, device.sharing) == ("gpu0", "nvidia", "mps")
        assert set(device.sizes) == MPS_SIZES and "started by this agent" in device.note
        assert info.profile_key == "profile:a100-class"
        daemon_pid = int((tmp_path / "pipe" / PID_FILE).read_text())

        controller = Controller(store, client, {"resnet50": 108.0}, 0.2, scheduler="gpulet")
        await controller.step()
        placement = await store.placement()
        assert placement is not None and placement.gpulets
        assert {g.device_id for g in placement.gpulets} == {"gpu0"}
        assert {g.size for g in placement.gpulets} <= MPS_SIZES

        async def engine_error() -> str | None:
            statuses = (await store.gpulet_statuses([agent.agent_id])).get(agent.agent_id, [])
            return next((s.error for s in statuses if s.error), None)

        error = await until(engine_error, agent, "a worker's engine error")
        assert "no GPU engine can run" in error and "no CUDAExecutionProvider" in error
        # The worker chose its engine with its GPU and MPS share already in its environment.
        assert f"CUDA_VISIBLE_DEVICES='{GPU_UUID}'" in error
        shares = [f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE='{g.size:g}'" for g in placement.gpulets]
        assert any(share in error for share in shares), (error, shares)
    finally:
        await client.close()
        code = stop_process(agent.process, timeout_s=20.0)
        kill_daemon(tmp_path / "pipe" / PID_FILE)
    assert code == 0
    assert not alive(daemon_pid), "the agent must stop the MPS daemon it started"
    made = calls(tmp_path / "calls.jsonl")
    assert [c["call"] for c in made] == ["start", "quit"]
    assert made[0]["env"]["CUDA_VISIBLE_DEVICES"] == GPU_UUID  # type: ignore[index]


async def test_without_mps_the_cluster_shows_time_slicing(
    redis_url: str, key_prefix: str, store: Store, tmp_path: Path
) -> None:
    agent = spawn_agent(redis_url, key_prefix, [], env=nvidia_env(tmp_path, with_mps=False))
    try:
        (device,) = (await registered(store, agent)).devices
        assert device.sharing == "time-sliced" and device.sizes == (100.0,)
        assert "no nvidia-cuda-mps-control on PATH" in device.note
    finally:
        assert stop_process(agent.process, timeout_s=20.0) == 0


async def test_a_gpulet_on_a_device_the_agent_lacks_fails_once_and_is_not_restarted(
    redis_url: str, key_prefix: str, store: Store, tmp_path: Path
) -> None:
    agent = spawn_agent(redis_url, key_prefix, [], env=nvidia_env(tmp_path, with_mps=True))
    client = AgentClient(connections=4)
    try:
        await registered(store, agent)
        spec = GpuletSpec("g", agent.agent_id, "gpu7", (), (GpuletModel("resnet50"),), 50.0)
        await client.set_gpulets(agent.url, 1, [spec])

        async def settled() -> dict[str, object] | None:
            (status,) = (await client.gpulets(agent.url))["gpulets"]
            return status if status["state"] in ("failed", "restarting") else None

        status = await until(settled, agent, "the gpulet's failure")
        # A restart would fail the same way: it stays failed, saying why, until re-placed.
        assert (status["state"], status["restarts"]) == ("failed", 0)
        assert "gpu7, which this agent lacks" in str(status["error"])
    finally:
        await client.close()
        code = stop_process(agent.process, timeout_s=20.0)
        kill_daemon(tmp_path / "pipe" / PID_FILE)
    assert code == 0
