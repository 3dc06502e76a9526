"""`gpu_check --fake`: the host as the project's tests fake it, so that every step runs here the
way it will on a GPU host: NVML is tests/support/fake_pynvml (one H200-like GPU, MIG off), and
`nvidia-cuda-mps-control` is tests/support/fake_mps.py's script, first on PATH (or absent, or
failing, as `--fake-mps` says). CUDA itself cannot be faked: steps that need it fail, saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .runner import REPO_ROOT

FAKE_MPS_MODES = ("ok", "missing", "fail")
# What KINDS.md saw on the device: one H200, 143771 MiB, compute capability 9.0.
FAKE_GPU = {"uuid": "GPU-fake-h200-0000", "name": "NVIDIA H200", "memory_bytes": 143771 * 2**20,
            "compute_capability": [9, 0], "mig_mode": 0}  # fmt: skip


def fake_env(scratch: Path, logs: Path, mps: str) -> dict[str, str]:
    """The environment additions that make this host look like a GPU host."""
    from tests.support.fake_mps import install_fake_mps_control

    if mps not in FAKE_MPS_MODES:
        raise ValueError(f"--fake-mps {mps!r}: use one of {FAKE_MPS_MODES}")
    bin_dir = scratch / "fake-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if mps != "missing":
        install_fake_mps_control(bin_dir)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT / "tests" / "support" / "fake_pynvml"),
        "FAKE_NVML_GPUS": json.dumps([FAKE_GPU]),
        "FAKE_MPS_CALLS": str(logs / "fake-mps-calls.jsonl"),
    }
    if mps == "fail":
        env["FAKE_MPS_FAIL"] = "1"
    return env
