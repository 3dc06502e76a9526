"""benchmarks/gpu_check.py end to end on a faked GPU host (the project's fake NVML and MPS
binary), so that its first run on a real GPU is not its first run: every step's real code runs,
and what needs CUDA fails in words that say so. The e2e step's load and report, which need a
serving gpu-let, run against a CPU agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent.nvidia.nvml import GpuFacts
from agent.nvidia.profile_grid import Provenance, assemble_profile, shared_files, write_files
from benchmarks.gpu_check_steps.e2e import E2eAsk, run_e2e
from benchmarks.gpu_check_steps.runner import Context
from benchmarks.gpu_check_steps.summary import write_summary

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
RUN_TIMEOUT_S = 240.0
ENGINE_MISSING = "sees no CUDA device"  # torch's CPU build, as the test install brings
GIVEN_UP = re.compile(r"gpu-lets keep failing|model \w+ failed to load")
# The device tool brings back at most 8 files from $OUT.
DEVICE_MAX_FILES = 8


def plan_profile(folder: Path) -> Path:
    """A small profile of the e2e models at every MPS size, for the e2e steps to plan on
    (measuring one needs CUDA): L(b, s) = base · (1 + b/8) · 100/s."""
    gpu = GpuFacts(0, "GPU-synthetic", "NVIDIA H200", 143771 * 2**20, (9, 0))
    sizes = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
    base_ms = {"resnet50": 2.0, "bert_mini": 0.5}
    points = {(m, s): tuple((b, ms * (1 + b / 8) * 100 / s) for b in (1, 2, 4, 8, 16, 32))
              for m, ms in base_ms.items() for s in sizes}  # fmt: skip
    profile = assemble_profile("planned", gpu, sizes, points, "test")
    provenance = Provenance("test", "none", "none", "now", "MPS")
    write_files(folder, shared_files(profile, [], gpu, provenance))
    return folder / "planned.toml"


def gpu_check(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path / "out"
    env = {**os.environ, "GPULET_MODEL_DIR": str(tmp_path / "models"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--fake", "--out", str(out), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)  # fmt: skip
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text() in done.stdout  # printed as written
    return done.returncode, summary["steps"], out


def logs_in(out: Path) -> dict[str, str]:
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}  # fmt: skip


def assert_every_daemon_stopped(logs: dict[str, str]) -> None:
    made = [json.loads(line) for line in logs["logs/fake-mps-calls.jsonl"].splitlines()]
    starts = [c["env"]["CUDA_MPS_PIPE_DIRECTORY"] for c in made if c["call"] == "start"]
    quits = [c["env"]["CUDA_MPS_PIPE_DIRECTORY"] for c in made if c["call"] == "quit"]
    assert starts and sorted(starts) == sorted(quits)


def test_with_mps_every_step_runs_and_what_needs_cuda_says_so(tmp_path: Path) -> None:
    code, steps, out = gpu_check(tmp_path, "--plan-profile", str(plan_profile(tmp_path)))
    assert code == 1  # steps failed (no CUDA here); the script went on through all of them
    env = steps["env"]["figures"]
    assert steps["env"]["status"] == "ok"
    assert [(g["name"], g["memory_mib"], g["mig_enabled"]) for g in env["gpus"]] == \
        [("NVIDIA H200", 143771, False)]  # fmt: skip
    assert env["driver"] == "999.99.99-fake" and env["modules_missing"] == {}
    assert env["mps"]["daemon_usable"] and env["mps"]["binary"].endswith("nvidia-cuda-mps-control")
    assert not env["cuda_plain"]["ok"] and ENGINE_MISSING in env["cuda_plain"]["why"]
    assert env["torch"]["installed"] and env["torch"]["cuda"] is None
    assert env["versions"]["pydantic"] is not None
    assert env["sharing"]["mps"] and "no CUDA client can run here" in env["sharing"]["reason"]
    # tests/gpu skip without a GPU, and say so; nothing passed, so nothing was checked.
    pytest_step = steps["pytest"]
    assert pytest_step["status"] == "skipped" and pytest_step["figures"]["mps_ratio"] is None
    assert set(pytest_step["figures"]["counts"]) == {"skipped"}
    assert "needs an NVIDIA GPU" in pytest_step["reason"]
    profile = steps["profile"]
    assert profile["status"] == "failed" and "measuring failed (MPS)" in profile["reason"]
    assert ENGINE_MISSING in profile["reason"]
    assert "--sizes 20,40,50,60,80,100 --pairs 6 --name h200" in profile["figures"]["command"]
    e2e = steps["e2e"]
    # Whichever sees it first: this step (a failed restart) or `gpulet up` (exits naming it).
    assert e2e["status"] == "failed" and GIVEN_UP.search(e2e["reason"])
    assert ENGINE_MISSING in e2e["reason"]
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE='" in e2e["reason"]  # an MPS share, bound
    assert {d["sharing"] for d in e2e["figures"]["devices"]} == {"mps"}
    # `gpulet up` stopped everything itself (exit 1), or on our Ctrl-C: never killed.
    assert e2e["figures"]["stop"] in ("gpulet up stopped, exit 1", "gpulet up had exited 1")
    for name in ("fallback_profile", "fallback_e2e"):
        assert steps[name]["status"] == "skipped" and steps[name]["reason"].startswith("MPS usable")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["logs.tar.gz", "summary.json", "summary.md"]
    logs = logs_in(out)
    assert {"logs/pytest.log", "logs/profile.log", "logs/e2e-up.log", "logs/env-facts.json"} <= \
        set(logs)  # fmt: skip
    assert_every_daemon_stopped(logs)
    assert not list(tmp_path.glob("gck-*")), "the scratch folder is removed"


def test_without_mps_the_whole_gpu_is_profiled_and_served_time_sliced(tmp_path: Path) -> None:
    code, steps, out = gpu_check(tmp_path, "--fake-mps", "missing", "--skip", "pytest",
                                 "--plan-profile", str(plan_profile(tmp_path)))  # fmt: skip
    assert code == 1
    why = "no nvidia-cuda-mps-control on PATH"
    assert steps["env"]["status"] == "ok" and not steps["env"]["figures"]["sharing"]["mps"]
    assert steps["pytest"] == {**steps["pytest"], "status": "skipped",
                               "reason": "not asked for (--only/--skip)"}  # fmt: skip
    for name in ("profile", "e2e"):
        assert steps[name]["status"] == "skipped" and why in steps[name]["reason"]
    fallback = steps["fallback_profile"]
    assert fallback["status"] == "failed" and f"time-sliced (whole GPU; MPS unusable: {why}" \
        in fallback["reason"]  # fmt: skip
    assert "--sizes 100 --pairs 0 --name h200-time-sliced" in fallback["figures"]["command"]
    served = steps["fallback_e2e"]
    assert served["status"] == "failed" and GIVEN_UP.search(served["reason"])
    # A whole-GPU gpu-let, no MPS share in its worker's environment.
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=None" in served["reason"]
    assert [(d["sharing"], d["sizes"]) for d in served["figures"]["devices"]] == \
        [("time-sliced", [100.0])]  # fmt: skip
    assert {g["size"] for g in served["figures"]["placement"]} == {100.0}
    assert len(list(out.iterdir())) <= DEVICE_MAX_FILES
    assert "logs/fake-mps-calls.jsonl" not in logs_in(out)  # no binary: no daemon was tried


def test_an_mps_daemon_that_fails_to_start_is_reported_with_its_words(tmp_path: Path) -> None:
    code, steps, _ = gpu_check(tmp_path, "--fake-mps", "fail", "--only", "env")
    assert code == 0
    sharing = steps["env"]["figures"]["sharing"]
    assert not sharing["mps"] and not sharing["daemon_ok"]
    assert "-d exited 1: Failed to start MPS control daemon: permission denied" in \
        sharing["reason"]  # fmt: skip
    assert {n: s["status"] for n, s in steps.items()} == {"env": "ok", **{
        n: "skipped" for n in ("pytest", "profile", "e2e", "fallback_profile", "fallback_e2e")}}


def test_the_e2e_step_drives_load_through_a_serving_system_and_reports_it(
    tmp_path: Path, model_dir: Path
) -> None:
    """The same step with a CPU agent, which can serve here: peak, capped rate, loadgen, the
    report's attainment and p99, and a clean stop."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPULET_MODEL_DIR": str(model_dir)}
    ctx = Context(tmp_path, tmp_path / "logs", env, tmp_path / "scratch", False)
    ctx.logs.mkdir()
    ask = E2eAsk("e2e-cpu", {"noop": 100.0, "lenet": 200.0}, {"GPULET_DEVICE_KIND": "cpu"},
                 None, duration_s=3.0, max_rps=15.0)  # fmt: skip
    result = run_e2e(ctx, 150.0, ask)
    assert result.status == "ok", result.reason
    figures = result.figures
    assert figures["peak_rps"] > 30 and figures["rate_rps"] == 15.0  # half the peak, capped
    assert {d["sharing"] for d in figures["devices"]} == {"serving-shared"}  # 2 CPU cores
    load = figures["load"]
    assert set(load["models"]) == {"noop", "lenet"}
    assert load["total"]["sent"] > 30 and load["total"]["attainment"] >= 0.99
    assert load["total"]["p99_ms"] is not None and load["replans"] == 0
    assert "attainment" in result.reason and "lenet:" in result.reason
    assert figures["stop"] == "gpulet up stopped, exit 0"
    assert {Path(p).name for p in result.logs} == {"e2e-cpu-up.log", "e2e-cpu-scenario.toml",
                                                   "e2e-cpu-loadgen.json", "e2e-cpu-loadgen.log"}
    text = write_summary(tmp_path, {"host": "h"}, {"e2e": result})
    noop = load["models"]["noop"]
    assert f"| noop | 100.0 | {noop['sent']} | {noop['ok']} |" in text
    assert json.loads((tmp_path / "summary.json").read_text())["steps"]["e2e"]["status"] == "ok"
