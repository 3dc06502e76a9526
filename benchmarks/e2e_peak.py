"""End-to-end peak: the rate the running system serves within SLO, against the planner's r*.

Run: `python benchmarks/e2e_peak.py [--scenario PATH ...] [--schedulers gpulet+int,temporal]
[--time-scale K] [--repeats 3] [--duration S] [--json benchmarks/results/e2e_peak.json]`.

For each scenario and scheduler:
  1. predicted peak r*: the offline peak search (`router.scheduling.offline.find_peak`, what
     `gpulet peak` runs) on the devices the router will plan: a simulated scenario's GPUs on its
     profile x K; a cpu scenario's cores on the profile the agent measured (read from Redis
     after a first start of the system);
  2. the real system: `gpulet up --scenario PATH --time-scale K` (Redis, one agent, the router)
     with GPULET_SCHEDULER and GPULET_RATES = weight x r* / K per model, so the router plans for
     the predicted peak once and never re-plans;
  3. open-loop Poisson load (`gpulet loadgen ... --time-scale K`), one trial per rate, at
     f x r* for f from START_FRACTION up (in strides of two STEP_FRACTION steps, then the step
     between the last hit and the first miss) until fewer than ATTAINMENT_GOAL of the requests
     are answered 200 within their SLO (down from START_FRACTION when that already misses);
     the measured peak is the highest rate that met the goal (at most MAX_FRACTION x r*);
  4. per scheduler: predicted, measured, measured / predicted; between the two schedulers the
     ratio of measured peaks against the ratio of predicted ones.
Rates r are in the scenario's units (per-model rate = weight x r); K divides what is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from e2e_peak_text import Run, Trial, as_trial, render, summary
from system import POLL_INTERVAL_S, READY_TIMEOUT_S, gpulet_up, http_get

from common import redis_server
from common.interference import NoInterference
from common.profiles import DeviceProfile
from common.scenarios import PACKAGED_SCENARIOS, Scenario, load_scenario
from router.scheduling.live import cpu_devices, serving_shared
from router.scheduling.offline import (
    Setting,
    catalog_serving_ms,
    find_peak,
    plan_at,
    setting_for,
)
from router.scheduling.types import PlanConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIOS = (PACKAGED_SCENARIOS / "a100-scen3.toml", PACKAGED_SCENARIOS / "cpu-pair.toml")
DEFAULT_SCHEDULERS = ("gpulet+int", "temporal")
ATTAINMENT_GOAL = 0.99  # share of requests answered 200 within their SLO
START_FRACTION = 0.7  # first trial at this share of r*
STEP_FRACTION = 0.05  # of r*, between trials
MAX_FRACTION = 1.5  # stop going up here: the prediction is far off, say so
# Total req/s sent at the larger predicted r*: K is the smallest integer that keeps it under
# this. Measured on the 2-core box (loadgen, router, simulated agent and Redis sharing it;
# a100-scen3, gpulet+int, token bodies, 20 s trials): 1000 req/s in all met the SLOs of 100 %
# of requests (K = 10), 1264 req/s too (K = 5), 1535 req/s did not (98 %; the sender ran 90 ms
# late at p99). Half of that at r* leaves room for the trials above r* (up to MAX_FRACTION).
MAX_TOTAL_RPS = 600.0
# A trial must be long against the SLOs: a system run past its capacity only falls behind by
# about (overload share x elapsed time), which stays within an SLO's slack for a while, so a
# short trial overstates the peak by up to slack / duration. TRIAL_SLOS x the longest (scaled)
# SLO keeps that near 10 % at worst; MIN_TRIAL_S bounds it below for short SLOs.
TRIAL_SLOS = 10.0
MIN_TRIAL_S = 12.0
LOADGEN_SLACK_S = 120.0  # beyond the run: answers still due, the process's own start-up


# ---------------------------------------------------------------- pure: K, trial length, search


def choose_time_scale(scenario: Scenario, peaks_rps: Sequence[float], max_total_rps: float) -> int:
    """The smallest integer K that keeps the total sent at the largest r* within the limit."""
    if not scenario.simulated:
        return 1  # real devices cannot be slowed down
    total = max(peaks_rps, default=0.0) * sum(m.weight for m in scenario.models)
    return max(1, math.ceil(total / max_total_rps))


def trial_duration_s(scenario: Scenario, k: int) -> float:
    """Long enough against the scenario's longest SLO at time scale K (see TRIAL_SLOS)."""
    longest_s = max(m.slo_ms for m in scenario.models) * k / 1000
    return max(MIN_TRIAL_S, math.ceil(TRIAL_SLOS * longest_s))


def search_peak(
    meets_goal: Callable[[float], bool],
    start: float = START_FRACTION,
    step: float = STEP_FRACTION,
    high: float = MAX_FRACTION,
) -> float | None:
    """The highest fraction of r* on the grid of `step` multiples that meets the goal, between
    `step` and `high`; None if even `step` misses.

    1. bracket: from `start`, up in strides of two steps while it meets the goal; or, when
       `start` misses, down by halves until a fraction meets it;
    2. bisect the bracket (last hit, first miss) on the grid until they are one step apart.
    """

    def grid(fraction: float) -> float:
        return round(max(step, round(fraction / step) * step), 6)

    hit: float | None = None
    miss: float | None = None
    if meets_goal(grid(start)):
        hit = grid(start)
        while hit < high:
            trying = min(grid(hit + 2 * step), grid(high))
            if not meets_goal(trying):
                miss = trying
                break
            hit = trying
        if miss is None:
            return hit  # `high` met the goal: the search stops there
    else:
        miss = grid(start)
        while hit is None:
            if miss <= step:
                return None
            trying = grid(miss / 2)
            if meets_goal(trying):
                hit = trying
            else:
                miss = trying
    while miss - hit > step + 1e-9:
        middle = grid((hit + miss) / 2)
        if middle in (hit, miss):
            break
        if meets_goal(middle):
            hit = middle
        else:
            miss = middle
    return hit


# ---------------------------------------------------------------- predicted peak


def predicted_peak(
    scenario: Scenario,
    scheduler: str,
    k: int,
    cpu_profile: DeviceProfile | None,
    agents: Sequence[Any] = (),
) -> float:
    """r* of `scheduler` on the devices the router plans, in the scenario's units.

    The peak search (`find_peak`) takes the first sweep step's infeasibility to mean none is
    feasible. Where it finds nothing, every step of the sweep is planned instead (cheap at the
    sizes where it happens): temporal sharing of one 2-core CPU is infeasible at low rates,
    whose batching windows fill the SLO, yet feasible at higher ones. 0: none is feasible.
    """
    if scenario.simulated:
        # The router plans simulated GPUs on the profile x K (interference fitted unscaled,
        # which `setting_for` loads by the profile's name) with SLOs x K.
        setting = setting_for(scenario.time_scaled(k), scenario.profile().time_scaled(k))
    else:
        if cpu_profile is None:
            raise ValueError(f"{scenario.name}: a cpu scenario needs the agent's profile")
        devices, _ = cpu_devices(agents, cpu_profile)  # sized to each agent's cores, as live
        # Serving's CPU charged as the router charges it: where serving shares the cores.
        setting = Setting(scenario, cpu_profile, tuple(devices), NoInterference(), "cpu",
                          catalog_serving_ms(scenario), serving_shared(agents))  # fmt: skip
    row = find_peak(setting, scheduler, PlanConfig())
    if row.peak_rps is None:
        raise RuntimeError(f"{scheduler}: {scenario.name} is too large to search")
    if row.peak_rps > 0:
        return row.peak_rps
    steps = range(int(scenario.max_rps // scenario.step_rps), 0, -1)
    rates = (i * scenario.step_rps for i in steps)
    return next((r for r in rates if plan_at(setting, scheduler, r, PlanConfig()).feasible), 0.0)


# ---------------------------------------------------------------- the system under test


@contextmanager
def system_up(path: Path, k: int, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`gpulet up --scenario PATH --time-scale K` as a child; yields its URL once ready."""
    args = ["--scenario", str(path)]
    if env.get("GPULET_SERVING_CORES", "0") != "0":
        # Serving apart (`split_cores`): every core, less serving's, for the workers; `up`
        # itself pins its router, agent and Redis to serving's cores.
        args += ["--agent-cores", ",".join(map(str, sorted(os.sched_getaffinity(0))))]
    if k != 1:  # only simulated GPUs can be slowed down; `up` refuses K on a cpu scenario
        args += ["--time-scale", str(k)]
    with gpulet_up(args, env, log_path) as (base, _):
        yield base


def cpu_profile_and_agents(
    path: Path, env: dict[str, str], log_path: Path, redis_url: str, prefix: str
) -> tuple[DeviceProfile, list[Any]]:
    """Start the system once so that its agent measures (or reuses) its CPU profile; read it."""
    from common.store import Store

    async def read() -> tuple[DeviceProfile, list[Any]] | None:
        store = Store.from_url(redis_url, prefix)
        try:
            agents = await store.agents()
            keys = {a.profile_key for a in agents}
            if not agents or None in keys:
                return None
            found = await store.profile(sorted(k for k in keys if k)[0])
            return (DeviceProfile.from_json(found[0]), agents) if found else None
        finally:
            await store.close()

    with system_up(path, 1, {**env, "GPULET_SCHEDULER": "static"}, log_path):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (got := asyncio.run(read())) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no agent profile after {READY_TIMEOUT_S:.0f}s")
            time.sleep(POLL_INTERVAL_S)
    return got


def trial(
    base: str,
    path: Path,
    scenario: Scenario,
    k: int,
    rate: float,
    duration_s: float,
    seed: int,
    out: Path,
    pinned: set[int] | None = None,
) -> dict[str, Any]:
    """One `gpulet loadgen` run at sweep rate r; its report."""
    args = [sys.executable, "-m", "common.cli.main", "loadgen", str(path), "--url", base, "--rate",
            f"{rate:.4f}", "--duration", f"{duration_s:g}", "--time-scale", str(k), "--seed",
            str(seed), "--out", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=duration_s + LOADGEN_SLACK_S,
                          preexec_fn=None if pinned is None else
                          lambda: os.sched_setaffinity(0, pinned))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def run_scheduler(
    path: Path,
    scenario: Scenario,
    scheduler: str,
    k: int,
    predicted: float,
    duration_s: float,
    step: float,
    env: dict[str, str],
    tmp: Path,
    seed: int,
) -> Run:
    scaled = scenario.time_scaled(k)
    rates = scaled.rates_at(predicted)
    weights = sum(m.weight for m in scenario.models)
    env = {**env, "GPULET_SCHEDULER": scheduler,
           "GPULET_RATES": ",".join(f"{n}={r:.4f}" for n, r in rates.items())}  # fmt: skip
    trials: list[Trial] = []
    with system_up(path, k, env, tmp / "up.log") as base:
        status, cluster = http_get(f"{base}/v1/cluster")
        placement = list(cluster["placement"]["explanation"]) if status == 200 else []

        def meets_goal(fraction: float) -> bool:
            rate = fraction * predicted
            out = tmp / f"{scheduler}-{fraction:.3f}.json"
            report = trial(base, path, scenario, k, rate, duration_s, seed, out,
                           serving_cores(env))  # fmt: skip
            found = as_trial(report, rate, fraction, rate * weights / k)
            trials.append(found)
            print(f"    {scheduler:11s} r = {rate:7.1f} ({fraction:.2f} r*, {found.sent_rps:.0f} "
                  f"req/s sent): {found.attainment:.2%} within SLO"
                  + (f"  errors {found.errors}" if found.errors else ""), flush=True)  # fmt: skip
            return found.attainment >= ATTAINMENT_GOAL

        best = search_peak(meets_goal, step=step)
    measured = None if best is None else best * predicted
    return Run(scheduler, predicted, measured, placement, trials)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario",
        type=Path,
        action="append",
        default=None,
        help="scenario TOML; repeat for several (default: a100-scen3, cpu-pair)",
    )
    parser.add_argument(
        "--schedulers",
        default=",".join(DEFAULT_SCHEDULERS),
        help="comma-separated (default gpulet+int,temporal)",
    )
    parser.add_argument(
        "--time-scale",
        type=int,
        default=None,
        metavar="K",
        help=f"simulated scenarios: K (default: the smallest keeping r* within "
        f"{MAX_TOTAL_RPS:g} req/s in all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="whole searches (default 3)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds per trial (default: the larger of {MIN_TRIAL_S:g} s and {TRIAL_SLOS:g} "
        "x the longest SLO, scaled)",
    )
    parser.add_argument(
        "--step",
        type=float,
        default=STEP_FRACTION,
        help=f"rate step, as a share of r* (default {STEP_FRACTION:g})",
    )
    parser.add_argument(
        "--serving-cores",
        type=int,
        default=0,
        metavar="N",
        help="cpu scenarios: GPULET_SERVING_CORES=N: router, agent, Redis (and loadgen) on the "
        "first N cores, the workers on the rest (default 0: serving shares the workers' cores "
        "and the planner charges its CPU against them)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if not 0 <= args.serving_cores < len(os.sched_getaffinity(0)):
        parser.error(f"--serving-cores {args.serving_cores}: leave the workers at least one of "
                     f"the {len(os.sched_getaffinity(0))} cores")  # fmt: skip
    return args


def run_scenario(
    path: Path, schedulers: Sequence[str], args: argparse.Namespace, redis_url: str
) -> dict[str, Any]:
    scenario = load_scenario(path)
    prefix = f"gpulet-e2e-peak-{uuid.uuid4().hex[:8]}:"
    env = {
        "GPULET_REDIS_URL": redis_url,
        "GPULET_REDIS_PREFIX": prefix,
        "GPULET_LOG_LEVEL": "WARNING",
        # Keep the plan made for r*: no re-plan on measured rates (a router without the
        # setting ignores it).
        "GPULET_REPLAN_EPOCH_S": "0",
    }
    split = args.serving_cores if not scenario.simulated else 0
    split_cores(split, env)
    with tempfile.TemporaryDirectory(prefix="gpulet-e2e-peak-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            profile: DeviceProfile | None = None
            agents: list[Any] = []
            if not scenario.simulated:
                profile, agents = cpu_profile_and_agents(path, env, tmp / "up.log", redis_url,
                                                         prefix)  # fmt: skip
            unscaled = [predicted_peak(scenario, s, 1, profile, agents) for s in schedulers]
            k = args.time_scale if scenario.simulated and args.time_scale else \
                choose_time_scale(scenario, unscaled, MAX_TOTAL_RPS)  # fmt: skip
            predicted = dict(zip(schedulers, unscaled, strict=True))  # K = 1: found already
            if k != 1:
                predicted = {s: predicted_peak(scenario, s, k, profile, agents) for s in schedulers}
            duration_s = args.duration or trial_duration_s(scenario, k)
            print(f"{scenario.name}: K = {k}; {duration_s:g} s trials; predicted r* " + ", ".join(
                f"{s} {r:g}" for s, r in predicted.items()), flush=True)  # fmt: skip
            runs: list[Run] = []
            for repeat in range(args.repeats):
                for name in (s for s in schedulers if predicted[s] > 0):
                    runs.append(run_scheduler(path, scenario, name, k, predicted[name], duration_s,
                                              args.step, env, tmp, seed=repeat))  # fmt: skip
                print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
        except BaseException:
            log = tmp / "up.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            print(f"--- gpulet up log (tail) ---\n{tail}", file=sys.stderr)
            raise
        finally:
            _purge(redis_url, prefix)
    print()
    print(render(scenario, k, runs, predicted))
    print()
    return {
        "scenario": scenario.name, "path": str(path), "kind": scenario.kind, "time_scale": k,
        "trial_duration_s": duration_s,
        "weights": {m.name: m.weight for m in scenario.models},
        "slo_ms": {m.name: m.slo_ms for m in scenario.models},
        "serving_cores": split,
        "predicted_rps": predicted, "summary": summary(runs, predicted),
        "runs": [asdict(r) for r in runs],
    }  # fmt: skip


def split_cores(cores: int, env: dict[str, str]) -> None:
    """GPULET_SERVING_CORES, the product's own setting: with `cores` > 0 `gpulet up` keeps the
    first `cores` for its router, agent and Redis and the workers get the rest (the planner
    then charges no serving CPU to them); `serving_cores` names them, where `trial` pins
    loadgen. 0: serving shares the workers' cores, and the planner charges it."""
    everything = sorted(os.sched_getaffinity(0))
    if cores >= len(everything):
        raise ValueError(f"--serving-cores {cores}: only {len(everything)} cores; leave some "
                         "for the workers")  # fmt: skip
    env["GPULET_SERVING_CORES"] = str(max(0, cores))


def serving_cores(env: dict[str, str]) -> set[int] | None:
    """The cores serving runs on when the workers have their own (`split_cores`); else None."""
    count = int(env.get("GPULET_SERVING_CORES", "0"))
    return set(sorted(os.sched_getaffinity(0))[:count]) if count > 0 else None


def _purge(redis_url: str, prefix: str) -> None:
    from common.store import Store

    async def purge() -> None:
        store = Store.from_url(redis_url, prefix)
        try:
            await store.purge()
        finally:
            await store.close()

    asyncio.run(purge())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwind through the finally blocks that stop the system

    signal.signal(signal.SIGTERM, on_term)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    redis = redis_server.resolve(os.environ.get("GPULET_REDIS_URL") or os.environ.get("REDIS_URL"))
    try:
        results = [run_scenario(p, schedulers, args, redis.url)
                   for p in args.scenario or DEFAULT_SCENARIOS]  # fmt: skip
    finally:
        redis.stop()
    elapsed_s = time.perf_counter() - started
    print(f"goal: >= {ATTAINMENT_GOAL:.0%} of requests 200 within SLO; steps of {args.step:g} "
          f"r* from {START_FRACTION:g} r*; benchmark time {elapsed_s:.0f} s; load average "
          f"before {load}; {os.cpu_count()} cores")  # fmt: skip
    if args.json is not None:
        report = {
            "when": datetime.now().isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "method": __doc__, "goal_attainment": ATTAINMENT_GOAL,
            "step_fraction": args.step, "start_fraction": START_FRACTION,
            "max_total_rps": MAX_TOTAL_RPS, "repeats": args.repeats, "elapsed_s": elapsed_s,
            "scenarios": results,
        }  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the system was stopped", file=sys.stderr)
        sys.exit(130)
