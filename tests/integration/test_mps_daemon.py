"""MPS daemon management against a fake `nvidia-cuda-mps-control` on PATH (real processes): the
agent starts one in its own directories when none runs, stops only the one it started, and
says why when MPS cannot be used; its GPUs then share by time slicing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.nvidia.backend import build_nvidia_executor
from agent.nvidia.mps import PID_FILE, MpsDaemon
from agent.nvidia.nvml import GpuFacts
from common.settings import AgentSettings
from tests.support.fake_mps import alive, calls, install_fake_mps_control, kill_daemon

pytestmark = pytest.mark.timeout(60)
GPU = GpuFacts(0, "GPU-fake-0001", "NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))


@pytest.fixture
def fake_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake first on PATH; its calls logged; any daemon left behind killed by its pid."""
    install_fake_mps_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_CALLS", str(tmp_path / "calls.jsonl"))
    try:
        yield tmp_path
    finally:
        kill_daemon(tmp_path / "pipe" / PID_FILE)


def daemon(tmp_path: Path) -> MpsDaemon:
    return MpsDaemon(tmp_path / "pipe", tmp_path / "log", ("GPU-fake-0001", "GPU-fake-0002"))


def test_starts_a_daemon_in_its_own_directories_and_stops_it(fake_mps: Path) -> None:
    mps = daemon(fake_mps)
    state = mps.ensure()
    assert state.usable and state.started_by_us and state.pid is not None
    assert alive(state.pid)
    (start,) = calls(fake_mps / "calls.jsonl")
    assert start["call"] == "start"
    assert start["env"] == {
        "CUDA_MPS_PIPE_DIRECTORY": str(fake_mps / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(fake_mps / "log"),
        "CUDA_VISIBLE_DEVICES": "GPU-fake-0001,GPU-fake-0002",
    }
    assert "control daemon" in (fake_mps / "log" / "control.log").read_text()
    mps.stop()
    assert not alive(state.pid)
    assert [c["call"] for c in calls(fake_mps / "calls.jsonl")] == ["start", "quit"]
    assert mps.running_pid() is None


def test_a_daemon_already_running_is_used_and_left_running(fake_mps: Path) -> None:
    someone_else = daemon(fake_mps)
    theirs = someone_else.ensure()  # as if an admin had started it
    assert theirs.pid is not None
    ours = daemon(fake_mps)
    state = ours.ensure()
    assert state.usable and not state.started_by_us and state.pid == theirs.pid
    assert "not ours" in state.reason
    ours.stop()
    assert alive(theirs.pid)
    assert [c["call"] for c in calls(fake_mps / "calls.jsonl")] == ["start"]  # no second -d
    someone_else.stop()
    assert not alive(theirs.pid)


def test_a_failing_start_makes_mps_unusable_with_the_reason(
    fake_mps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    state = daemon(fake_mps).ensure()
    assert not state.usable and not state.started_by_us
    assert "exited 1" in state.reason and "permission denied" in state.reason


def test_no_control_binary_means_mps_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    state = daemon(tmp_path).ensure()
    assert not state.usable and "no nvidia-cuda-mps-control on PATH" in state.reason
    assert not (tmp_path / "pipe").exists()


def settings(tmp_path: Path, **extra: object) -> AgentSettings:
    return AgentSettings(model_dir=tmp_path / "models", mps_pipe_dir=tmp_path / "pipe",
                         mps_log_dir=tmp_path / "log", device_kind="nvidia",
                         **extra)  # type: ignore[arg-type]  # fmt: skip


async def test_agent_gpus_share_by_mps_and_the_daemon_stops_with_the_agent(
    fake_mps: Path,
) -> None:
    supervisor = build_nvidia_executor(settings(fake_mps), read=lambda: ((GPU,), "test"))
    assert supervisor is not None
    (device,) = supervisor.devices
    assert (device.device_id, device.sharing, device.sizes[0]) == ("gpu0", "mps", 20.0)
    assert "started by this agent" in device.note
    pid = supervisor.daemon.state.pid if supervisor.daemon else None
    assert pid is not None and alive(pid)
    await supervisor.close()
    assert not alive(pid)


async def test_without_mps_the_agent_says_time_sliced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    supervisor = build_nvidia_executor(settings(tmp_path), read=lambda: ((GPU,), "test"))
    assert supervisor is not None
    try:
        (device,) = supervisor.devices
        assert device.sharing == "time-sliced" and device.sizes == (100.0,)
        assert "no nvidia-cuda-mps-control" in device.note
        assert any("time-sliced" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)  # fmt: skip
    finally:
        await supervisor.close()
