"""The environment a GPU gpulet's worker starts with: MPS share, MIG binding, time slicing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.nvidia.backend import NvidiaSupervisor
from agent.nvidia.inventory import Inventory
from agent.nvidia.worker_env import GpuSlot, gpulet_env
from common.placement import GpuletModel, GpuletSpec
from common.settings import AgentSettings

pytestmark = pytest.mark.timeout(30)

MPS = GpuSlot("gpu0", "GPU-aaaa", "mps", "/run/gpulet/pipe")
MIG = GpuSlot("gpu1-mig0", "MIG-bbbb", "mig")
TIME = GpuSlot("gpu2", "GPU-cccc", "time-sliced")


def test_mps_gpulet_gets_its_gpu_pipe_and_share() -> None:
    assert gpulet_env(MPS, 40.0) == {
        "CUDA_VISIBLE_DEVICES": "GPU-aaaa",
        "CUDA_MPS_PIPE_DIRECTORY": "/run/gpulet/pipe",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40",
    }
    # The worker sees one device, device 0: the memory limit names it.
    limited = gpulet_env(MPS, 42.5, memory_limit_mb=6000)
    assert limited["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "42.5"
    assert limited["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=6000M"


def test_mig_and_time_sliced_gpulets_get_only_their_device() -> None:
    assert gpulet_env(MIG, 42.857) == {"CUDA_VISIBLE_DEVICES": "MIG-bbbb"}
    assert gpulet_env(TIME, 100.0, memory_limit_mb=6000) == {"CUDA_VISIBLE_DEVICES": "GPU-cccc"}


def test_bad_mps_slots_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="no pipe directory"):
        gpulet_env(GpuSlot("gpu0", "GPU-a", "mps"), 50.0)
    for size in (0.0, 120.0):
        with pytest.raises(ValueError, match="percentage"):
            gpulet_env(MPS, size)


async def test_supervisor_binds_each_gpulet_to_its_device(tmp_path: Path) -> None:
    settings = AgentSettings(model_dir=tmp_path, gpu_engine="torch", gpu_memory_limit_mb=2048)
    inventory = Inventory((), {"gpu0": MPS, "gpu1-mig0": MIG})
    supervisor = NvidiaSupervisor(settings, inventory, None, "nvidia:key")
    try:
        spec = GpuletSpec("a.gpu0.p0", "a", "gpu0", (), (GpuletModel("resnet18"),), size=60.0)
        setup = supervisor.setup_for(spec)
        assert setup.gpu_engine == "torch"
        assert dict(setup.env) == {
            "CUDA_VISIBLE_DEVICES": "GPU-aaaa",
            "CUDA_MPS_PIPE_DIRECTORY": "/run/gpulet/pipe",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "60",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2048M",
        }
        elsewhere = GpuletSpec("a.gpu7.p0", "a", "gpu7", (), (GpuletModel("resnet18"),), 50.0)
        with pytest.raises(ValueError, match="device gpu7, which this agent lacks"):
            supervisor.setup_for(elsewhere)
    finally:
        await supervisor.close()
