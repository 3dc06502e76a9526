"""`gpulet profile --nvidia` as a real process on a faked NVIDIA host (fake `pynvml` first on
PYTHONPATH, fake `nvidia-cuda-mps-control` first on PATH): with MPS and without it, and what it
writes once measured (in-process: measuring itself needs CUDA, which no fake gives)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.nvidia import backend
from agent.nvidia.nvml import GpuFacts
from agent.nvidia.profile_cli import _write
from agent.nvidia.profile_grid import PairPoint, PairResult
from common.profiles import load_profile
from common.settings import AgentSettings
from tests.support.fake_mps import calls, install_fake_mps_control

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
GPU_UUID = "GPU-fake-h200"
WAIT_S = 90.0


def profile_cli(tmp_path: Path, *args: str, with_mps: bool) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    if with_mps:
        install_fake_mps_control(bin_dir)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT / "fake_pynvml"), str(REPO)]),
        "FAKE_NVML_GPUS": json.dumps([{"uuid": GPU_UUID, "name": "NVIDIA H200"}]),
        "FAKE_MPS_CALLS": str(tmp_path / "calls.jsonl"),
        "GPULET_MPS_PIPE_DIR": str(tmp_path / "pipe"),
        "GPULET_MPS_LOG_DIR": str(tmp_path / "log"),
        "GPULET_MODEL_DIR": str(tmp_path / "models"),
        "GPULET_GPU_ENGINE": "torch",
    }
    command = [sys.executable, "-m", "common.cli.main", "profile", "--nvidia", "--models",
               "resnet18", "--batches", "1,2", "--out", str(tmp_path / "out"), *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=WAIT_S, check=False)  # fmt: skip


def test_a_measuring_failure_is_one_line_naming_why_and_the_daemon_is_stopped(
    tmp_path: Path,
) -> None:
    done = profile_cli(tmp_path, "--sizes", "50,100", with_mps=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "measuring failed (MPS): profile-50% failed: EngineUnavailable" in done.stderr
    assert f"CUDA_VISIBLE_DEVICES='{GPU_UUID}'" in done.stderr
    assert [c["call"] for c in calls(tmp_path / "calls.jsonl")] == ["start", "quit"]
    assert not (tmp_path / "out").exists()


def test_without_mps_partitions_are_refused_and_the_whole_gpu_is_measured_time_sliced(
    tmp_path: Path,
) -> None:
    refused = profile_cli(tmp_path, "--sizes", "50,100", with_mps=False)
    assert refused.returncode == 2
    assert "no nvidia-cuda-mps-control on PATH" in refused.stderr
    assert "`--sizes 100` measures whole-GPU (time-sliced) gpu-lets" in refused.stderr

    whole = profile_cli(tmp_path, "--sizes", "100", with_mps=False)
    # It got as far as measuring, time-sliced: the process ran on the GPU, not under MPS.
    assert whole.returncode == 1 and "Traceback" not in whole.stderr
    assert "measuring failed (time-sliced (whole GPU; MPS unusable: no nvidia-cuda-mps-control" \
        in whole.stderr
    assert "profile-100% failed: EngineUnavailable" in whole.stderr


def test_what_is_measured_is_written_with_its_provenance_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "read_host_driver", lambda: "580.159.04")
    monkeypatch.setattr(sys, "argv", ["gpulet", "profile", "--nvidia", "--name", "h200"])
    gpu = GpuFacts(0, GPU_UUID, "NVIDIA H200", 141 * 2**30, (9, 0))
    points = {(m, s): ((1, 1.0 * s / 100), (8, 4.0 * s / 100))
              for m in ("resnet18", "bert_mini") for s in (50.0, 100.0)}  # fmt: skip
    pair = PairResult(PairPoint("resnet18", 8, 50.0, "bert_mini", 1, 50.0), 3.0, 0.9, 0.1, 0.05)
    args = argparse.Namespace(name="h200", out=tmp_path / "out")
    settings = AgentSettings(model_dir=tmp_path / "models")
    models = ("resnet18", "bert_mini")
    files, key, profile = _write(args, settings, gpu, "MPS", (50.0, 100.0), models, points,
                                 [pair], "torch-cuda")  # fmt: skip
    assert sorted(p.name for p in files) == ["h200-interference.csv", "h200.csv", "h200.toml"]
    head = (tmp_path / "out" / "h200.csv").read_text().splitlines()[1]
    assert head.startswith("# Measured on NVIDIA H200 (GPU-fake-h200, compute capability 9.0), "
                           "driver 580.159.04, engine torch-cuda, FP32, partitions by MPS, at 20")
    toml = (tmp_path / "out" / "h200.toml").read_text()
    assert "# Command: gpulet profile --nvidia --name h200\n" in toml
    assert load_profile(tmp_path / "out" / "h200.toml").latency_points == profile.latency_points
    cached = tmp_path / "profiles" / f"{key.replace(':', '-')}.json"
    assert json.loads(cached.read_text())["meta"]["engine"] == "torch-cuda"
