"""On a real NVIDIA GPU (marked `gpu`: skipped, saying why, where NVML finds none).

Run there with `python -m pytest tests/gpu -m gpu -v`. They check what the fakes cannot:
discovery through the real driver, an engine on CUDA computing what it does on the CPU, a
gpulet serving a batch under the MPS daemon the agent started, and MPS shares taking effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.nvidia.backend import build_nvidia_executor, mps_dirs, read_host_gpus
from agent.nvidia.engines import BoundSession, torch_sessions
from agent.nvidia.mps import MpsDaemon
from agent.nvidia.profile_grid import plan_gpu_request
from agent.nvidia.profile_run import GpuTarget, measure_solo
from agent.profiling.measure import profile_inputs
from common.models import CATALOG
from common.placement import GpuletModel, GpuletSpec
from common.settings import AgentSettings

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
# resnet50 at batch 32 keeps a whole H100 busy; at 20 % of the SMs it should take well over
# twice as long. A loose bound: MPS shares that did not take effect would give about 1.
MIN_SLOWDOWN_AT_20_PCT = 1.5


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(device_kind="nvidia", mps_pipe_dir=tmp_path / "pipe",
                         mps_log_dir=tmp_path / "log")  # fmt: skip


@pytest.fixture
def mps(settings: AgentSettings) -> Iterator[MpsDaemon]:
    gpus, _ = read_host_gpus()
    plain = [g for g in gpus if not g.mig_enabled]
    if not plain:
        pytest.skip("every GPU is in MIG mode")
    pipe, log = mps_dirs(settings)
    daemon = MpsDaemon(pipe, log, (plain[0].uuid,))
    if not daemon.ensure().usable:
        pytest.skip(f"MPS {daemon.state.reason}")
    try:
        yield daemon
    finally:
        daemon.stop()


def test_nvml_finds_the_gpus() -> None:
    gpus, source = read_host_gpus()
    assert gpus, f"{source} listed no GPU"
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.memory_bytes > 2**30
        assert gpu.compute_capability >= (7, 0)  # MPS with per-client limits needs Volta+
        assert all(m.uuid.startswith("MIG-") and 0 < m.size_pct <= 100 for m in gpu.mig)


@pytest.mark.parametrize("model", ["resnet18", "bert_mini"])
def test_torch_engine_on_cuda_answers_as_on_the_cpu(model: str) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    feeds = profile_inputs(CATALOG[model], 4)
    (on_gpu,) = torch_sessions((model,), "cuda", 1)[model].run(None, feeds)
    (on_cpu,) = torch_sessions((model,), "cpu", 1)[model].run(None, feeds)
    # cuDNN convolutions use TF32 by default on Ampere and later: close, not bit-equal.
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=2e-2, atol=2e-2)
    assert (on_gpu.argmax(axis=1) == on_cpu.argmax(axis=1)).all()


def test_io_binding_answers_as_plain_run(request: pytest.FixtureRequest) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (onnxruntime-gpu not installed)")
    # Only now: building the model zoo takes a while, wasted where the test skips.
    model_dir: Path = request.getfixturevalue("model_dir")
    path = str(model_dir / "resnet18.onnx")
    session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    feeds = profile_inputs(CATALOG["resnet18"], 8)
    (bound,) = BoundSession(session, CATALOG["resnet18"]).run(None, feeds)
    (plain,) = session.run(None, feeds)
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)


async def test_an_mps_gpulet_serves_a_batch_and_reports_engine_and_memory(
    settings: AgentSettings,
) -> None:
    supervisor = build_nvidia_executor(settings)
    assert supervisor is not None
    await supervisor.start()
    try:
        device = next((d for d in supervisor.devices if d.sharing == "mps"), None)
        if device is None:
            pytest.skip(f"no MPS device: {[d.note for d in supervisor.devices]}")
        spec = GpuletSpec("gpu-test", "agent", device.device_id, (),
                          (GpuletModel("resnet18"),), size=50.0)  # fmt: skip
        await supervisor.apply([spec])
        async with asyncio.timeout(300):
            await supervisor.slots["gpu-test"].wait_for(lambda s: s.state in ("ready", "failed"))
        (status,) = supervisor.statuses()
        assert status.state == "ready", status.error
        assert status.engine in ("onnxruntime-cuda", "torch-cuda")
        assert status.gpu_memory_bytes > 0
        images = profile_inputs(CATALOG["resnet18"], 4)
        reply = await supervisor.run("gpu-test", "resnet18", images, time.monotonic() + 30)
        assert reply.tensors["output"].shape == (4, 1000)
    finally:
        await supervisor.close()


def test_mps_shares_take_effect(mps: MpsDaemon, settings: AgentSettings) -> None:
    """resnet50, batch 32, at 20 % and 100 % of the SMs, through the profiler's processes."""
    request = plan_gpu_request(["resnet50"], (20.0, 100.0), (32,), pair_count=0)
    env = {"CUDA_VISIBLE_DEVICES": mps.visible_devices[0], **mps.env()}
    points, engine = measure_solo(request, GpuTarget(env, settings.gpu_engine, settings.model_dir))
    at_20 = dict(points[("resnet50", 20.0)])[32]
    at_100 = dict(points[("resnet50", 100.0)])[32]
    # benchmarks/gpu_check.py reads this line: keep its "MPS ratio ... = X" form.
    print(f"MPS ratio resnet50 b32 20%/100% = {at_20 / at_100:.2f} on {engine}: 20 % "
          f"{at_20:.1f} ms ({32e3 / at_20:.0f} img/s), 100 % {at_100:.1f} ms "
          f"({32e3 / at_100:.0f} img/s)")  # fmt: skip
    assert at_20 / at_100 >= MIN_SLOWDOWN_AT_20_PCT
