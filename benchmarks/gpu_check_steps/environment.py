"""Step `env`: the host's facts (probe.py under the step's environment, and nvidia-smi's own
words), and the decision the later steps follow: partition by MPS, or time-slice whole GPUs."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .runner import FAILED, OK, Context, StepResult, run_logged, stop_left_daemon, tail

PROBE = "benchmarks/gpu_check_steps/probe.py"
SMI_QUERY = ("--query-gpu=name,driver_version,memory.total,mig.mode.current,compute_mode,"
             "clocks.sm,clocks.max.sm", "--format=csv")  # fmt: skip
SMI_TIMEOUT_S = 10.0  # each nvidia-smi call; the probe gets the budget less two of these


@dataclass(frozen=True)
class Sharing:
    """How the GPU steps partition the GPU, and why."""

    mps: bool
    reason: str
    cuda_plain: bool  # whether a CUDA client runs at all, without MPS
    daemon_ok: bool  # whether an MPS control daemon starts (gpulet would then use it)


def run_env(ctx: Context, budget_s: float) -> StepResult:
    started = time.monotonic()
    probe_log, facts_path = ctx.logs / "env-probe.log", ctx.logs / "env-facts.json"
    dirs = ctx.mps_env("env")
    args = [sys.executable, PROBE, "--pipe-dir", dirs["GPULET_MPS_PIPE_DIR"],
            "--log-dir", dirs["GPULET_MPS_LOG_DIR"]]  # fmt: skip
    done = run_logged(args, ctx.env, probe_log, budget_s - 2 * SMI_TIMEOUT_S, stdout=facts_path)
    left = stop_left_daemon(ctx, "env")
    smi = _smi(ctx)
    logs = [ctx.rel(p) for p in (probe_log, facts_path, *smi)]
    facts = _last_json(facts_path.read_text() if facts_path.exists() else "")
    if done.timed_out or done.returncode != 0 or facts is None:
        why = "timed out" if done.timed_out else f"exited {done.returncode}"
        return StepResult("env", FAILED, f"the probe {why}: {tail(probe_log)}",
                          time.monotonic() - started, {"left_daemon": left}, logs)  # fmt: skip
    sharing = decide_sharing(facts)
    figures = {**facts, "sharing": asdict(sharing), "left_daemon": left}
    return StepResult("env", OK, describe(facts, sharing), time.monotonic() - started,
                      figures, logs)  # fmt: skip


def decide_sharing(facts: dict[str, Any]) -> Sharing:
    """MPS when its daemon starts and a CUDA client runs under it; a client that fails only
    under MPS means MPS is broken here. Where CUDA runs nowhere (a host without it, or the
    fakes) the daemon alone decides: the GPU steps then fail for want of CUDA, saying so."""
    mps = facts.get("mps") or {}
    plain = bool((facts.get("cuda_plain") or {}).get("ok"))
    if not mps.get("daemon_usable"):
        return Sharing(False, f"MPS {mps.get('reason', 'not tried')}", plain, False)
    client = mps.get("client") or {}
    if client.get("ok"):
        return Sharing(True, f"MPS {mps['reason']}; a CUDA client at {mps.get('client_pct')} % "
                       f"saw {client.get('sm_count')} SMs", plain, True)  # fmt: skip
    if plain:
        return Sharing(False, "MPS daemon started, but a CUDA client under it failed while one "
                       f"without it ran: {client.get('why')}", plain, True)  # fmt: skip
    return Sharing(True, f"MPS {mps['reason']}; no CUDA client can run here to try it "
                   f"({client.get('why')})", plain, True)  # fmt: skip


def fallback_skip_reason(sharing: Sharing, profile: StepResult) -> str | None:
    """Why the time-sliced steps are not needed; None when they are: MPS unusable, or its
    profile failed where CUDA runs without MPS (then MPS itself may be what failed)."""
    if not sharing.mps:
        return None
    if profile.status == FAILED and sharing.cuda_plain:
        return None
    return f"MPS usable ({sharing.reason})"


def describe(facts: dict[str, Any], sharing: Sharing) -> str:
    """One line: the GPU, driver, MIG, torch/CUDA, onnxruntime, missing modules, sharing."""
    gpus = facts.get("gpus") or []
    gpu = (f"{gpus[0]['name']} {gpus[0]['memory_mib']} MiB, MIG "
           f"{'on' if gpus[0]['mig_enabled'] else 'off'}" if gpus
           else f"no GPU ({facts.get('gpu_error')})")  # fmt: skip
    torch = facts.get("torch") or {}
    torch_text = (f"torch {torch.get('version')} CUDA {torch.get('cuda')}"
                  if torch.get("version") else "no torch")  # fmt: skip
    ort = facts.get("onnxruntime") or {}
    parts = [f"{gpu} via {facts.get('gpu_source')}, driver {facts.get('driver')}", torch_text,
             f"onnxruntime {ort.get('version')} {ort.get('providers')}",
             f"CUDA without MPS: {_client_text(facts.get('cuda_plain'))}",
             f"{'MPS' if sharing.mps else 'time-sliced'}: {sharing.reason}"]  # fmt: skip
    if facts.get("modules_missing"):
        parts.append(f"MISSING modules: {facts['modules_missing']}")
    return "; ".join(parts)


def _client_text(client: dict[str, Any] | None) -> str:
    if not client:
        return "not tried"
    return f"ran on {client.get('device')}" if client.get("ok") else f"no ({client.get('why')})"


def _smi(ctx: Context) -> list[Any]:
    """nvidia-smi's own view (full table and the query), saved as it printed them."""
    if shutil.which("nvidia-smi", path=ctx.env.get("PATH")) is None:
        path = ctx.logs / "env-nvidia-smi.txt"
        path.write_text("nvidia-smi: not on PATH\n")
        return [path]
    saved = []
    for name, args in (("env-nvidia-smi.txt", ()), ("env-nvidia-smi-query.csv", SMI_QUERY)):
        path = ctx.logs / name
        run_logged(["nvidia-smi", *args], ctx.env, path, SMI_TIMEOUT_S)
        saved.append(path)
    return saved


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None
