"""Check gpulet on a real NVIDIA GPU host in one command, in under 8 minutes, and keep what it
learns: `python benchmarks/gpu_check.py [--out DIR]` (default $OUT if set, else a temp folder).

Steps, in order, each with its own time budget (seconds; --budgets env=70,... overrides) and
its own failure: a step that fails or runs out of time is recorded with its error and the
next one runs. Whatever is left of the total (--total-s, 450) caps each step's budget.

  env       (70)  probe.py: GPU, driver, MIG mode, nvidia-cuda-mps-control and whether a daemon
                  starts in a private pipe directory and serves a CUDA client (50 %), torch and
                  CUDA, onnxruntime's providers, gpulet's modules; nvidia-smi's own output.
                  Decides the sharing: MPS, or time-sliced whole GPUs (and says why).
  pytest    (90)  `python -m pytest tests/gpu -v`; counts, failures, and the MPS slowdown of
                  resnet50 batch 32 at 20 % against 100 % (test_mps_shares_take_effect).
  profile  (165)  `gpulet profile --nvidia` for resnet18, resnet50, mobilenet_v2, bert_mini at
                  batch 1-32 and sizes 20/40/50/60/80/100 %, 6 co-located pairs, into NAME.toml,
                  NAME.csv, NAME-interference.csv (NAME: the GPU's, e.g. h200), each headed by
                  its provenance (GPU, driver, engine, date, exact command).
  e2e      (115)  `gpulet up` (Redis, router, an NVIDIA agent planning on that profile), then
                  `gpulet loadgen` Poisson for 30 s on resnet50 and bert_mini at half the peak
                  rate the plan carries (at most 100 req/s each); SLO attainment and p99.
  fallback_profile (70), fallback_e2e (115): when MPS is unusable (or its profile failed while
                  CUDA runs without it), the same on whole-GPU time-sliced gpu-lets, NAME-time-
                  sliced.*; the reason is in the summary.

How the profiling grid fits its 165 s: 4 models x 6 batches x 6 sizes = 144 points, each a cold
run, a warm-up and 5 timed runs (RunBudget), well under a second even for resnet50 at batch 32
on 20 % of an H200; the cost is the 6 measuring processes (one per size: torch import, CUDA
context under MPS, 4 nets built), about 10-15 s each. The pairs come last and stop starting at
--max-seconds = budget - 35 s (the last pair's two processes and the writing), so a slow GPU
gets fewer pairs, never a lost profile. Budgets sum to 440 s; the total is 450 s (7.5 min).

Output: summary.md (printed at the end) and summary.json, rewritten after every step; the
profile files; logs.tar.gz holding every step's log (the device tool returns at most 8 files).

Here, without a GPU: `--fake` points NVML at tests/support/fake_pynvml (one H200-like GPU) and
`nvidia-cuda-mps-control` at tests/support/fake_mps.py (--fake-mps ok|missing|fail), so every
step runs its real code; what needs CUDA fails saying so (there is no fake CUDA), and
`--plan-profile PATH.toml` gives the e2e steps a profile to plan on when none was measured.
tests/integration/test_gpu_check.py runs it so.

On the device (the lead's session; device README): first, here, `benchmarks/gpu_wheels.sh`
(the wheels the device lacks, into the git-ignored .device-wheels/; it prints this same
command on one line), then the run tool with carry [".device-wheels"], timeout_s 480 and
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .device-wheels/*.whl && export PYTHONPATH=/tmp/site && \
      PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT
(--target and --no-deps as the device README says: the wheels hold exactly what the image
lacks, and pip's resolver, looking at the image's own packages, would stop the whole install
on one it judged too old). That takes about 9.5 minutes of the 15 with the machine's start. A
rerun of only what failed (after a fix here) fits in what is left, a fresh start included: the
same command ending in e.g. `--only env,e2e --total-s 150` (env decides the sharing, so keep
it), with timeout_s 170.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout, installed or not

from gpu_check_steps.e2e import E2eAsk, nvidia_agent_env, run_e2e  # noqa: E402
from gpu_check_steps.environment import Sharing, fallback_skip_reason, run_env  # noqa: E402
from gpu_check_steps.fake import FAKE_MPS_MODES, fake_env  # noqa: E402
from gpu_check_steps.profile_step import (  # noqa: E402
    MPS_SIZES,
    PAIRS,
    WHOLE_GPU,
    ProfileAsk,
    run_profile,
)
from gpu_check_steps.runner import FAILED, OK, SKIPPED, Context, StepResult  # noqa: E402
from gpu_check_steps.summary import STEP_ORDER, pack_logs, write_summary  # noqa: E402
from gpu_check_steps.tests_step import run_pytest  # noqa: E402

TOTAL_S = 450.0
BUDGETS_S = {"env": 70.0, "pytest": 90.0, "profile": 165.0, "e2e": 115.0,
             "fallback_profile": 70.0, "fallback_e2e": 115.0}  # fmt: skip
MIN_STEP_S = 20.0  # a step is skipped, not started, with less than this left of the total
FINISH_RESERVE_S = 5.0  # the summary and the packing of the logs
# resnet50 at the paper's SLO (its a100 scenarios), bert_mini at the catalog's.
E2E_SLOS_MS = {"resnet50": 108.0, "bert_mini": 60.0}
E2E_DURATION_S, FAKE_E2E_DURATION_S = 30.0, 4.0
# A resnet50 request is ~800 KB of JSON (its 602 KB image in base64): 100 req/s is ~80 MB/s
# through one router and one loadgen process, comfortably under what they carry.
E2E_MAX_RPS = 100.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else temp)")
    p.add_argument("--fake", action="store_true", help="the project's fake NVML and MPS")
    p.add_argument("--fake-mps", choices=FAKE_MPS_MODES, default="ok",
                   help="with --fake: the MPS binary works, is missing, or fails")  # fmt: skip
    p.add_argument("--only", default=None, help=f"steps to run, of {','.join(STEP_ORDER)}")
    p.add_argument("--skip", default="", help="steps not to run")
    p.add_argument("--total-s", type=float, default=TOTAL_S, help="the whole run's budget")
    p.add_argument("--budgets", default="", help="per-step budgets, e.g. 'profile=120,e2e=90'")
    p.add_argument("--profile-name", default=None, help="NAME.toml (default: the GPU's)")
    p.add_argument("--pairs", type=int, default=PAIRS, help="co-located pairs to measure")
    p.add_argument("--plan-profile", type=Path, default=None, metavar="PATH.toml",
                   help="plan the e2e steps on this profile when none was measured")  # fmt: skip
    p.add_argument("--e2e-duration-s", type=float, default=None,
                   help=f"load duration (default {E2E_DURATION_S:g}; --fake: "
                   f"{FAKE_E2E_DURATION_S:g})")  # fmt: skip
    p.add_argument("--e2e-max-rps", type=float, default=E2E_MAX_RPS, help="cap per model")
    p.add_argument("--no-pack", action="store_true", help="leave logs/ unpacked")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT")
                       else Path(tempfile.mkdtemp(prefix="gpu-check-")))  # fmt: skip
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Short: MPS pipe directories hold unix sockets, whose paths stop at 108 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="gck-", dir="/tmp"))
    budgets = {**BUDGETS_S, **_pairs(args.budgets)}
    wanted = set(args.only.split(",")) if args.only else set(STEP_ORDER)
    wanted -= set(filter(None, args.skip.split(",")))
    real_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": _path_join(str(REPO_ROOT), os.environ.get("PYTHONPATH"))}  # fmt: skip
    env = dict(real_env)
    if args.fake:
        extra = fake_env(scratch, logs, args.fake_mps)
        env.update(extra, PYTHONPATH=_path_join(extra["PYTHONPATH"], real_env["PYTHONPATH"]))
    ctx = Context(out, logs, env, scratch, args.fake)
    meta = {"host": socket.gethostname(), "fake": args.fake, "total_budget_s": args.total_s,
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv])}  # fmt: skip
    steps: dict[str, StepResult] = {}

    def step(name: str, run: Callable[[float], StepResult] | None, skip_why: str | None) -> None:
        left = args.total_s - (time.monotonic() - started) - FINISH_RESERVE_S
        if name not in wanted:
            result = StepResult(name, SKIPPED, "not asked for (--only/--skip)")
        elif skip_why is not None or run is None:
            result = StepResult(name, SKIPPED, skip_why or "nothing to run")
        elif left < MIN_STEP_S:
            result = StepResult(name, SKIPPED, f"{left:.0f} s left of the {args.total_s:g} s "
                                f"total; a step needs {MIN_STEP_S:g}")  # fmt: skip
        else:
            print(f"gpu_check: {name} (budget {min(budgets[name], left):.0f} s)", flush=True)
            try:
                result = run(min(budgets[name], left))
            except Exception as exc:  # a step's own bug: recorded, and the next step runs
                result = StepResult(name, FAILED, f"gpu_check error: {type(exc).__name__}: {exc}")
        steps[name] = result
        print(f"gpu_check: {name} {result.status}: {result.reason}", flush=True)
        meta["elapsed_s"] = time.monotonic() - started
        write_summary(out, meta, steps)

    step("env", lambda b: run_env(ctx, b), None)
    sharing = _sharing(steps["env"])
    # tests/gpu need real CUDA, which no fake gives: under --fake they run on the real host
    # (where they skip, saying why), which still exercises this step's running and counting.
    step("pytest", lambda b: run_pytest(ctx, b, real_env if args.fake else env), None)
    name = args.profile_name or _default_name(steps["env"])
    mps_why = None if sharing.mps else f"time-sliced here: {sharing.reason}"
    ask = ProfileAsk("profile", name, MPS_SIZES, args.pairs)
    step("profile", lambda b: run_profile(ctx, b, ask), mps_why)
    duration = args.e2e_duration_s or (FAKE_E2E_DURATION_S if args.fake else E2E_DURATION_S)

    def e2e(step_name: str, profile_step: str, expect: str, why: str | None, off: bool) -> None:
        toml = _profile_for(steps[profile_step], out, args.plan_profile)
        if why is None and toml is None:
            why = f"no profile to plan on: {profile_step} {steps[profile_step].status}"
        run = None
        if toml is not None:
            e2e_ask = E2eAsk(step_name, E2E_SLOS_MS, nvidia_agent_env(ctx, step_name, toml,
                             mps_off=off), expect, duration, args.e2e_max_rps)  # fmt: skip
            run = lambda b: run_e2e(ctx, b, e2e_ask)  # noqa: E731
        step(step_name, run, why)

    e2e("e2e", "profile", "mps", mps_why, False)
    fallback_why = fallback_skip_reason(sharing, steps["profile"])
    # A daemon that starts (but serves no client, or its profile failed) would still be used
    # by gpulet: the time-sliced steps keep MPS out of their processes on purpose.
    off = sharing.daemon_ok
    fallback = ProfileAsk("fallback_profile", f"{name}-time-sliced", WHOLE_GPU, 0, mps_off=off)
    step("fallback_profile", lambda b: run_profile(ctx, b, fallback), fallback_why)
    e2e("fallback_e2e", "fallback_profile", "time-sliced", fallback_why, off)
    meta["elapsed_s"] = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)  # each step stopped the daemons it left there
    if not args.no_pack:
        pack_logs(out, logs)
    print("\n" + write_summary(out, meta, steps), flush=True)
    print(f"gpu_check: everything is in {out}", flush=True)
    return 0 if all(s.status != FAILED for s in steps.values()) else 1


def _sharing(env: StepResult) -> Sharing:
    found = env.figures.get("sharing")
    if env.status != OK or not found:
        return Sharing(False, f"the env step {env.status}: {env.reason}", False, False)
    return Sharing(bool(found["mps"]), str(found["reason"]), bool(found["cuda_plain"]),
                   bool(found["daemon_ok"]))  # fmt: skip


def _profile_for(step: StepResult, out: Path, given: Path | None) -> Path | None:
    if step.status == OK:
        return out / f"{step.figures['name']}.toml"
    return given.resolve() if given is not None else None


def _default_name(env: StepResult) -> str:
    """'NVIDIA H200' -> 'h200' (agent.nvidia.profile_grid.default_name, less the vendor)."""
    gpus = env.figures.get("gpus") or []
    text = re.sub(r"[^a-z0-9]+", "-", gpus[0]["name"].lower()).strip("-") if gpus else "gpu"
    return text.removeprefix("nvidia-") or "gpu"


def _pairs(text: str) -> dict[str, float]:
    budgets = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in BUDGETS_S:
            raise SystemExit(f"--budgets: unknown step {key!r}; steps: {', '.join(BUDGETS_S)}")
        budgets[key] = float(value)
    return budgets


def _path_join(*parts: str | None) -> str:
    return os.pathsep.join(p for p in parts if p)


if __name__ == "__main__":
    sys.exit(main())
