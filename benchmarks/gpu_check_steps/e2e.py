"""Steps `e2e` and `fallback_e2e`: the whole system on the GPU host and real load through it.

  1. `gpulet up --models M1,M2 --no-build` (Redis, one agent, the router) with the agent told
     to plan its GPU on the profile just measured (GPULET_NVIDIA_PROFILE, GPULET_PROFILES_DIR)
     and the router to keep its first plan (GPULET_REPLAN_EPOCH_S=0): with no GPULET_RATES
     that plan is for the largest equal rate the GPU carries;
  2. wait for /readyz, giving up early when every gpu-let not ready keeps failing;
  3. that peak rate from GET /v1/plan?peak=true; the load is LOAD_FRACTION of it per model,
     capped at max_rps (what one router and one loadgen push comfortably);
  4. `gpulet loadgen` Poisson at that rate for the duration; its report gives attainment and
     p99 per model; the step is ok when the attainment of all requests reaches ATTAINMENT_GOAL;
  5. Ctrl-C to `gpulet up`, which stops router, agent, workers, Redis and its MPS daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import (
    FAILED,
    OK,
    REPO_ROOT,
    SKIPPED,
    Context,
    StepResult,
    end_group,
    run_logged,
    stop_left_daemon,
    tail,
)

ATTAINMENT_GOAL = 0.99  # as benchmarks/e2e_peak.py: 200 within the SLO
LOAD_FRACTION = 0.5  # of the planned peak: a rate the plan carries with room to spare
LOADGEN_SLACK_S = 15.0  # loadgen's start-up and the answers still due after its last send
STOP_TIMEOUT_S = 20.0  # `gpulet up` stopping everything after Ctrl-C
PEAK_TIMEOUT_S = 60.0  # a peak search takes a second or more
POLL_S = 0.5
HTTP_TIMEOUT_S = 10.0
MIN_READY_S = 20.0  # for the system to start and its gpu-lets to load, at the least


@dataclass(frozen=True)
class E2eAsk:
    step: str
    slos_ms: Mapping[str, float]  # the two served models and their SLOs
    agent_env: Mapping[str, str]  # what makes the agent the one under test
    expect_sharing: str | None  # the device sharing the agent must report ("mps", ...)
    duration_s: float
    max_rps: float  # per model
    load_fraction: float = LOAD_FRACTION


def nvidia_agent_env(
    ctx: Context, step: str, profile_toml: Path, *, mps_off: bool = False
) -> dict[str, str]:
    """An NVIDIA agent planning on the profile at `profile_toml`, with torch's CUDA engine;
    `mps_off`: MPS kept out on purpose (see Context.no_mps_env)."""
    mps = ctx.no_mps_env(step) if mps_off else ctx.mps_env(step)
    return {"GPULET_DEVICE_KIND": "nvidia", "GPULET_GPU_ENGINE": "torch",
            "GPULET_NVIDIA_PROFILE": profile_toml.stem,
            "GPULET_PROFILES_DIR": str(profile_toml.parent), **mps}  # fmt: skip


def run_e2e(ctx: Context, budget_s: float, ask: E2eAsk) -> StepResult:
    needed_s = MIN_READY_S + ask.duration_s + LOADGEN_SLACK_S + STOP_TIMEOUT_S
    if budget_s < needed_s:
        why = (f"{budget_s:.0f} s left for it; a {ask.duration_s:g} s load needs "
               f"{needed_s:.0f} s with start-up and stop")  # fmt: skip
        return StepResult(ask.step, SKIPPED, why)
    started = time.monotonic()
    deadline = started + budget_s
    up_log = ctx.logs / f"{ask.step}-up.log"
    figures: dict[str, Any] = {"slos_ms": dict(ask.slos_ms)}
    logs = [ctx.rel(up_log)]
    from common.procs import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**ctx.env, **ask.agent_env, "GPULET_REPLAN_EPOCH_S": "0",
           "GPULET_SLOS": ",".join(f"{m}={ms:g}" for m, ms in ask.slos_ms.items()),
           "GPULET_REDIS_PREFIX": f"gpucheck-{ask.step}:"}  # fmt: skip
    args = [sys.executable, "-m", "common.cli.main", "up", "--models", ",".join(ask.slos_ms),
            "--no-build", "--port", str(port)]  # fmt: skip
    with up_log.open("ab") as log:
        up = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        status, reason = _serve_and_load(ctx, ask, base, up, up_log, deadline, figures, logs)
    finally:
        figures["stop"] = _stop(up)
        figures["left_daemon"] = stop_left_daemon(ctx, ask.step)
    return StepResult(ask.step, status, reason, time.monotonic() - started, figures, logs)


def _serve_and_load(
    ctx: Context,
    ask: E2eAsk,
    base: str,
    up: subprocess.Popen[bytes],
    up_log: Path,
    deadline: float,
    figures: dict[str, Any],
    logs: list[str],
) -> tuple[str, str]:
    waited_from = time.monotonic()
    ready_by = deadline - ask.duration_s - LOADGEN_SLACK_S - STOP_TIMEOUT_S
    ready, why = wait_ready(base, up, up_log, ready_by)
    figures["ready_after_s"] = round(time.monotonic() - waited_from, 1)
    cluster = _get(f"{base}/v1/cluster")[1] if up.poll() is None else None
    figures.update(cluster_figures(cluster))
    if not ready:
        return FAILED, why
    sharing = {d["sharing"] for d in figures["devices"]}
    if ask.expect_sharing is not None and sharing != {ask.expect_sharing}:
        notes = "; ".join(d["note"] for d in figures["devices"])
        return FAILED, f"the agent shares by {sorted(sharing)}, not {ask.expect_sharing}: {notes}"
    code, body = _get(f"{base}/v1/plan?peak=true", PEAK_TIMEOUT_S)
    peak = (body or {}).get("peak", {}).get("peak_rps") if code == 200 else None
    figures["peak_rps"] = peak
    if not peak:
        return FAILED, f"no peak rate from /v1/plan?peak=true (HTTP {code}): {body}"
    rate = min(ask.load_fraction * float(peak), ask.max_rps)
    figures["rate_rps"] = round(rate, 2)
    scenario = write_scenario(ctx.logs / f"{ask.step}-scenario.toml", ask)
    report_path = ctx.logs / f"{ask.step}-loadgen.json"
    load_log = ctx.logs / f"{ask.step}-loadgen.log"
    logs += [ctx.rel(p) for p in (scenario, report_path, load_log)]
    timeout_s = min(ask.duration_s + LOADGEN_SLACK_S, deadline - time.monotonic() - STOP_TIMEOUT_S)
    done = run_logged([sys.executable, "-m", "common.cli.main", "loadgen", str(scenario),
                       "--url", base, "--rate", f"{rate:g}", "--duration", f"{ask.duration_s:g}",
                       "--seed", "0", "--out", str(report_path), "--quiet"],
                      ctx.env, load_log, timeout_s)  # fmt: skip
    if done.returncode != 0 or not report_path.exists():
        what = "timed out" if done.timed_out else f"exited {done.returncode}"
        return FAILED, f"gpulet loadgen {what}: {tail(load_log, 3)}"
    load = load_figures(json.loads(report_path.read_text()))
    figures["load"] = load
    total = load["total"]
    text = (f"{ask.duration_s:g} s Poisson at {rate:.1f} req/s per model ({ask.load_fraction:g} x "
            f"peak {float(peak):.1f}, cap {ask.max_rps:g}): attainment {total['attainment']:.4f}, "
            f"p99 {total['p99_ms']} ms; " + "; ".join(
                f"{m}: {s['attainment']:.4f}, p99 {s['p99_ms']} ms (SLO {s['slo_ms']:g})"
                for m, s in load["models"].items()))  # fmt: skip
    if total["attainment"] < ATTAINMENT_GOAL:
        return FAILED, f"attainment below {ATTAINMENT_GOAL}: {text}"
    return OK, text


def wait_ready(
    base: str, up: subprocess.Popen[bytes], log: Path, ready_by: float
) -> tuple[bool, str]:
    """(True, "") once /readyz answers 200; else why not, as soon as that is certain."""
    last = "no answer yet"
    while time.monotonic() < ready_by:
        if up.poll() is not None:
            return False, f"gpulet up exited {up.returncode}: {tail(log, 4)}"
        code, body = _get(f"{base}/readyz")
        if code == 200:
            return True, ""
        if body is not None:
            last = str(body.get("error", {}).get("message", body))
        failing = failing_gpulets(_get(f"{base}/v1/cluster")[1])
        if failing:
            return False, f"gpu-lets keep failing: {failing}"
        time.sleep(POLL_S)  # polls a condition with a deadline; noqa: sleep-ok
    return False, f"not ready in time: {last}"


def failing_gpulets(cluster: dict[str, Any] | None) -> str | None:
    """The errors, when every gpu-let that is not ready has failed and been restarted at least
    once with an error still standing (a worker that cannot start fails the same way again);
    None while any might still come up."""
    gpulets = [g for a in (cluster or {}).get("agents", []) for g in a.get("gpulets", [])]
    waiting = [g for g in gpulets if g.get("state") != "ready"]
    if not waiting or not all(g.get("error") and g.get("restarts", 0) >= 1 for g in waiting):
        return None
    return "; ".join(sorted({f"{g['gpulet_id']}: {g['error']}" for g in waiting}))


def cluster_figures(cluster: dict[str, Any] | None) -> dict[str, Any]:
    agents = (cluster or {}).get("agents", [])
    return {
        "devices": [{"device_id": d["device_id"], "sharing": d.get("sharing", ""),
                     "sizes": d.get("sizes", []), "note": d.get("note", "")}
                    for a in agents for d in a.get("devices", [])],
        "gpulets": [{"gpulet_id": g["gpulet_id"], "state": g["state"], "models": g["models"],
                     "engine": g.get("engine"), "gpu_memory_bytes": g.get("gpu_memory_bytes"),
                     "error": g.get("error")}
                    for a in agents for g in a.get("gpulets", [])],
        "placement": [{"gpulet_id": g.get("gpulet_id"), "device_id": g.get("device_id"),
                       "size": g.get("size")}
                      for g in ((cluster or {}).get("placement") or {}).get("gpulets", [])],
    }  # fmt: skip


def load_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Attainment and latency per model and in total from `gpulet loadgen --out`'s report."""

    def stats(s: dict[str, Any]) -> dict[str, Any]:
        latency = s.get("latency") or {}
        return {"slo_ms": s.get("slo_ms"), "sent": s["sent"], "ok": s["ok"], "late": s["late"],
                "errors": s.get("errors", {}), "attainment": s["attainment"],
                "goodput_rps": round(s["goodput_rps"], 2), "p50_ms": _ms(latency.get("p50_ms")),
                "p99_ms": _ms(latency.get("p99_ms"))}  # fmt: skip

    lateness = report.get("lateness") or {}
    return {"models": {s["model"]: stats(s) for s in report["models"]},
            "total": stats(report["total"]), "sender_lateness_p99_ms": _ms(lateness.get("p99_ms")),
            "replans": len(report.get("replans", []))}  # fmt: skip


def write_scenario(path: Path, ask: E2eAsk) -> Path:
    """The load as a scenario file (common/data/scenarios format): each model at weight 1 x r."""
    lines = [f'name = "gpu-check-{ask.step}"',
             'description = "gpu_check: two models at a rate the plan carries"',
             '[cluster]', 'kind = "nvidia"', 'devices = 1', '[rate]', 'mode = "sweep"']  # fmt: skip
    for model, slo_ms in ask.slos_ms.items():
        lines += ["[[models]]", f'name = "{model}"', f"slo_ms = {slo_ms:g}", "weight = 1.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def _get(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int | None, dict[str, Any] | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return None, None  # not listening yet, or gone


def _stop(up: subprocess.Popen[bytes]) -> str:
    """Ctrl-C, as a user stops `gpulet up`; the process group killed if it hangs."""
    if up.poll() is not None:
        return f"gpulet up had exited {up.returncode}"
    up.send_signal(signal.SIGINT)
    try:
        return f"gpulet up stopped, exit {up.wait(timeout=STOP_TIMEOUT_S)}"
    except subprocess.TimeoutExpired:
        end_group(up, signal.SIGKILL)
        return f"gpulet up ignored Ctrl-C for {STOP_TIMEOUT_S:.0f}s; killed"
