"""Peak sweep rate of every scheduler on every simulated sweep scenario, judged by the fluid bound.

Run: `python benchmarks/peak_rate.py [--scenarios DIR] [--json OUT] [--max-gpulets 2,5]
[--skip-ideal] [--jobs N]`.

For each scenario and each cap k on gpu-lets per device (PlanConfig.max_gpulets_per_device):
  - the peak r of each scheduler (router.scheduling.offline.find_peak), its ratio to `temporal`
    and to `ideal`;
  - the fluid bound (router.scheduling.peak.fluid_bound): every model fills whole devices in its
    best allowed layout, no interference, no packing loss; for whole devices only (the temporal
    bound) and for the profile's sizes with up to k parts (bound_k); bound_k / bound_temporal is
    "the bound's gain";
  - for context (not a goal) an interference-aware bound: the same, but a layout of two or more
    parts has each part slowed by the fitted interference model, the same model in every part
    (see `interference_aware_throughput`);
  - goal lines: (a) on a100 scenarios, gpulet+int's gain over temporal must reach 90 % of the
    bound's gain; (b) gpulet+int / ideal >= 0.95 where ideal completes.
Profiles with no measurement of a scenario model at the whole device above batch 1 (v100-trt)
limit whole-device plans by missing data: their temporal ratios are reported as n/a.
Then the peak of gpulet+int with k = 2 against k = 5, and plan time on a 12-model a100-class
demand set at 64 and 256 devices.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

# Run as a script: this folder is on sys.path, so the sibling modules import by name.
from peak_rate_bounds import (
    BOUND_GAIN_SHARE_GOAL,
    DEFAULT_MAX_GPULETS,
    IDEAL_RATIO_GOAL,
    PLAN_TIME_DUPLICATE,
    PLAN_TIME_FRACTIONS,
    PLAN_TIME_GOALS_S,
    PLAN_TIME_PROFILE,
    PLAN_TIME_REPEATS,
    PLAN_TIME_SCHEDULERS,
    PLAN_TIME_SLO_FACTOR,
    bound_share,
    default_scenarios_dir,
    interference_aware_bound,
    ratio,
    scenario_models,
    temporal_data_limited,
)
from peak_rate_text import (
    gpulets_report,
    plan_time_report,
    scenario_report,
    summary_report,
)

from common.interference import InterferenceModel, NoInterference
from common.profiles import DeviceProfile, find_profile
from common.scenarios import Scenario, load_scenario
from router.scheduling.offline import find_peak, setting_for
from router.scheduling.peak import fluid_bound
from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import SCHEDULERS, plan
from router.scheduling.types import Device, ModelDemand, PlanConfig

# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Found:
    path: Path
    scenario: Scenario | None
    skipped: str | None  # why it is not run, else None


def discover(folder: Path) -> list[Found]:
    found = []
    for path in sorted(folder.glob("*.toml")):
        try:
            scenario = load_scenario(path)
        except (ValueError, KeyError, OSError) as error:
            found.append(Found(path, None, f"unreadable: {error}"))
            continue
        if scenario.kind != "simulated":
            found.append(Found(path, scenario, f"cluster kind {scenario.kind} (not simulated)"))
        elif scenario.mode != "sweep":
            found.append(Found(path, scenario, f"rate mode {scenario.mode} (not sweep)"))
        else:
            try:
                scenario.profile()
            except FileNotFoundError as error:
                found.append(Found(path, scenario, f"profile missing: {error}"))
                continue
            found.append(Found(path, scenario, None))
    return found


# ---------------------------------------------------------------- workers (one process each)


@functools.cache
def exactly(k: int) -> PlanConfig:
    """At most k gpu-lets per device, and no more: the planner's default (`more_gpulets`)
    would otherwise try the kind's maximum where k finds no plan."""
    return PlanConfig(max_gpulets_per_device=k, more_gpulets=False)


def default_peaks(paths: Sequence[str]) -> list[dict[str, Any]]:
    """gpulet+int as shipped: two gpu-lets per device, more where two find no plan."""
    rows = []
    for path in paths:
        row = find_peak(_setting(path), "gpulet+int", PlanConfig())
        rows.append({"scenario": load_scenario(Path(path)).name, "peak_rps": row.peak_rps})
    return rows


def _setting(path: str) -> Any:
    return setting_for(load_scenario(Path(path)))


def run_peak(path: str, k: int, scheduler: str) -> dict[str, Any]:
    """One peak search; runs in a worker process."""
    row = find_peak(_setting(path), scheduler, exactly(k))
    return {
        "scheduler": scheduler,
        "k": k,
        "peak_rps": row.peak_rps,
        "plans": row.plans,
        "seconds": round(row.seconds, 3),
        "devices_used": row.result.plan.devices_used if row.result and row.result.plan else None,
    }


def bounds_for(path: str, ks: Sequence[int]) -> dict[str, Any]:
    setting = _setting(path)
    scenario: Scenario = setting.scenario
    profile: DeviceProfile = setting.profile
    models = scenario_models(scenario)
    interference: InterferenceModel = setting.interference
    out: dict[str, Any] = {"interference_note": setting.interference_note}
    for k in ks:
        perf = PerfModel(profile, PlanConfig(max_gpulets_per_device=k))
        n = scenario.devices
        out[str(k)] = {
            "bound_temporal": fluid_bound(perf, models, n, [profile.full_size], 1),
            "bound_k": fluid_bound(perf, models, n, profile.sizes, k),
            "bound_int": interference_aware_bound(perf, interference, models, n, profile.sizes, k),
        }
    return out


# ---------------------------------------------------------------- plan time


def plan_time_demands(
    profile: DeviceProfile, config: PlanConfig, devices: int, fraction: float
) -> tuple[list[ModelDemand], float]:
    models = list(profile.models())
    entries = [(m, m) for m in models] + [(f"{PLAN_TIME_DUPLICATE}-2", PLAN_TIME_DUPLICATE)]
    slo = {
        m: PLAN_TIME_SLO_FACTOR * profile.latency_ms(m, 1, profile.full_size)
        * config.latency_margin
        for m in models
    }  # fmt: skip
    perf = PerfModel(profile, config)
    bound = fluid_bound(
        perf, [(m, slo[m], 1.0) for _, m in entries], devices, profile.sizes,
        config.max_gpulets_per_device,
    )  # fmt: skip
    rate = fraction * bound
    return [ModelDemand(name, m, rate, slo[m]) for name, m in entries], bound


def time_plans(ks: Sequence[int]) -> list[dict[str, Any]]:
    from common.interference_models import fitted_for

    profile = find_profile(PLAN_TIME_PROFILE)
    fitted = fitted_for(profile.name, profile)
    interference: InterferenceModel = fitted if fitted is not None else NoInterference()
    rows = []
    for k in ks:
        config = exactly(k)
        for devices in sorted(PLAN_TIME_GOALS_S):
            made = [Device(f"gpu{i}", "offline", profile) for i in range(devices)]
            for fraction in PLAN_TIME_FRACTIONS:
                demands, bound = plan_time_demands(profile, config, devices, fraction)
                for name in PLAN_TIME_SCHEDULERS:
                    times = []
                    result = None
                    for _ in range(PLAN_TIME_REPEATS):
                        started = time.perf_counter()
                        result = plan(name, demands, made, config, interference)
                        times.append(time.perf_counter() - started)
                    assert result is not None
                    median = statistics.median(times)
                    goal = PLAN_TIME_GOALS_S[devices]
                    rows.append({
                        "k": k, "devices": devices, "models": len(demands),
                        "fraction_of_bound": fraction, "bound_rps": round(bound, 1),
                        "rate_per_model_rps": round(demands[0].rate_rps, 1),
                        "scheduler": name, "median_s": median, "min_s": min(times),
                        "max_s": max(times), "first_s": times[0], "goal_s": goal,
                        "pass": median < goal, "feasible": result.feasible,
                        "devices_used": result.devices_used,
                    })  # fmt: skip
    return rows


# ---------------------------------------------------------------- assembly


def assemble(
    scenario: Scenario,
    profile: DeviceProfile,
    peaks: dict[tuple[int, str], dict[str, Any]],
    bounds: dict[str, Any],
    ks: Sequence[int],
    schedulers: Sequence[str],
) -> dict[str, Any]:
    limited = temporal_data_limited(profile, [m.model for m in scenario.models])
    goal_a_applies = profile.name.startswith("a100")
    entry: dict[str, Any] = {
        "scenario": scenario.name,
        "path": str(scenario.path),
        "profile": profile.name,
        "devices": scenario.devices,
        "step_rps": scenario.step_rps,
        "max_rps": scenario.max_rps,
        "models": [
            {"name": m.name, "model": m.model, "slo_ms": m.slo_ms, "weight": m.weight}
            for m in scenario.models
        ],
        "temporal_data_limited": limited,
        "goal_a_applies": goal_a_applies and not limited,
        "interference_note": bounds["interference_note"],
        "by_k": {},
    }
    for k in ks:
        rows = [peaks[(k, s)] for s in schedulers if (k, s) in peaks]
        by_name = {r["scheduler"]: r["peak_rps"] for r in rows}
        peak_t = by_name.get("temporal")
        ideal = by_name.get("ideal")
        ideal_ok = ideal is not None and ideal > 0
        for row in rows:
            row["ratio_to_temporal"] = None if limited else ratio(row["peak_rps"], peak_t)
            row["ratio_to_ideal"] = ratio(row["peak_rps"], ideal) if ideal_ok else None
        b = dict(bounds[str(k)])
        bt = b["bound_temporal"]
        b["bound_gain"] = None if limited else ratio(b["bound_k"], bt)
        b["bound_int_gain"] = None if limited else ratio(b["bound_int"], bt)
        b["temporal_efficiency"] = None if limited else ratio(peak_t, bt)
        gi = by_name.get("gpulet+int")
        goal_a: dict[str, Any] = {"applies": entry["goal_a_applies"]}
        if not limited and gi is not None and peak_t:
            share = bound_share(gi, peak_t, b["bound_k"], bt)
            over_peak = b["bound_k"] / peak_t
            goal_a.update(
                gi_gain=gi / peak_t,
                share=share,
                bound_over_peak_t=over_peak,
                share_vs_peak_t=(gi - peak_t) / (b["bound_k"] - peak_t)
                if b["bound_k"] > peak_t
                else None,
            )
            goal_a["pass"] = share is not None and share >= BOUND_GAIN_SHARE_GOAL
        else:
            goal_a.update(gi_gain=None, share=None, bound_over_peak_t=None, share_vs_peak_t=None)
            goal_a["pass"] = None
        if "ideal" not in by_name:
            state = "skipped"
        elif ideal is None:
            state = "too large"
        elif ideal <= 0:
            state = "found no feasible rate"
        else:
            state = "completed"
        gb_ratio = ratio(gi, ideal) if ideal_ok else None
        goal_b = {
            "ratio": gb_ratio,
            "ideal_state": state,
            "pass": None if gb_ratio is None else gb_ratio >= IDEAL_RATIO_GOAL,
        }
        entry["by_k"][str(k)] = {
            "rows": rows,
            "peaks": by_name,
            "bounds": b,
            "goal_a": goal_a,
            "goal_b": goal_b,
        }
    return entry


def compare_gpulets(entries: list[dict[str, Any]], low: int, high: int) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        for name in ("gpulet+int", "gpulet", "ideal"):
            lo = entry["by_k"][str(low)]["peaks"]
            hi = entry["by_k"][str(high)]["peaks"]
            if name not in lo or name not in hi:
                continue
            a, b = lo[name], hi[name]
            if a is None or b is None:
                verdict = "n/a"
            elif b > a:
                verdict = "better"
            elif b == a:
                verdict = "same"
            else:
                verdict = "worse"
            out.append(
                {"scenario": entry["scenario"], "scheduler": name, "low": a, "high": b,
                 "verdict": verdict}
            )  # fmt: skip
    return out


def parse_ks(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--max-gpulets wants positive integers, not {text!r}")
    return tuple(dict.fromkeys(values))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--scenarios", type=Path, default=None, help="scenario folder")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument(
        "--max-gpulets", type=parse_ks, default=DEFAULT_MAX_GPULETS,
        help="comma-separated caps on gpu-lets per device (default 2,5)",
    )  # fmt: skip
    parser.add_argument("--skip-ideal", action="store_true", help="do not run the ideal search")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1),
        help="worker processes for the peak searches (plan timing always runs alone)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ks: tuple[int, ...] = args.max_gpulets
    folder: Path = args.scenarios or default_scenarios_dir()
    schedulers = tuple(s for s in SCHEDULERS if not (args.skip_ideal and s == "ideal"))

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    print(f"command: cd {shlex.quote(os.getcwd())} && {command}")
    print(f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.jobs} worker process(es) for peak searches"
    )
    print(f"scenarios: {folder}")
    found = discover(folder)
    run = [f for f in found if f.skipped is None and f.scenario is not None]
    for f in found:
        if f.skipped:
            print(f"  skipped {f.path.name}: {f.skipped}")
    print(f"  running {', '.join(f.path.name for f in run)}; max gpu-lets per device {ks}")

    # Longest first: ideal with the largest k, then ideal, then the rest.
    tasks = [(str(f.path), k, s) for f in run for k in ks for s in schedulers]
    tasks.sort(key=lambda t: (t[2] != "ideal", -t[1]))
    peaks: dict[tuple[str, int, str], dict[str, Any]] = {}
    bounds: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as ex:
        futures = {t: ex.submit(run_peak, *t) for t in tasks}
        bound_futures = {str(f.path): ex.submit(bounds_for, str(f.path), ks) for f in run}
        for t, future in futures.items():
            peaks[t] = future.result()
        for path, future in bound_futures.items():
            bounds[path] = future.result()
    peaks_done = time.perf_counter() - started

    entries = []
    for f in run:
        assert f.scenario is not None
        path = str(f.path)
        mine = {(k, s): row for (p, k, s), row in peaks.items() if p == path}
        entries.append(
            assemble(f.scenario, f.scenario.profile(), mine, bounds[path], ks, schedulers)
        )

    lines: list[str] = []
    for entry in entries:
        lines += scenario_report(entry, ks)
    lines += summary_report(entries, ks)
    comparison: list[dict[str, Any]] = []
    if len(ks) >= 2:
        low, high = min(ks), max(ks)
        comparison = compare_gpulets(entries, low, high)
        lines += gpulets_report(comparison, low, high)
    defaults = default_peaks([str(f.path) for f in run])
    lines.append(
        "\n== gpulet+int as shipped (2 gpu-lets per device; more only where 2 find no plan)"
    )
    by_scenario = {e["scenario"]: e for e in entries}
    for row in defaults:
        entry = by_scenario.get(row["scenario"], {})
        per_k = {k: entry.get("by_k", {}).get(str(k), {}).get("peaks", {}).get("gpulet+int")
                 for k in ks}  # fmt: skip
        shown = ", ".join(f"k={k}: {v}" for k, v in per_k.items())
        lines.append(f"  {row['scenario']:<12} default {row['peak_rps']}   ({shown})")
    print("\n".join(lines), flush=True)

    timing_started = time.perf_counter()
    timings = time_plans(ks)
    timing_s = time.perf_counter() - timing_started
    print("\n".join(plan_time_report(timings)))
    total = time.perf_counter() - started
    print(
        f"\ntotal run time {total:.1f} s (peak searches and bounds {peaks_done:.1f} s, "
        f"plan timing {timing_s:.1f} s)"
    )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": command,
            "cwd": os.getcwd(),
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "jobs": args.jobs,
            "scenarios_dir": str(folder),
            "max_gpulets": list(ks),
            "gpulet_int_default_peaks": defaults,
            "schedulers": list(schedulers),
            "goals": {
                "bound_gain_share": BOUND_GAIN_SHARE_GOAL,
                "ideal_ratio": IDEAL_RATIO_GOAL,
                "plan_time_s": {str(k): v for k, v in PLAN_TIME_GOALS_S.items()},
            },
            "skipped": [{"file": f.path.name, "reason": f.skipped} for f in found if f.skipped],
            "scenarios": entries,
            "gpulet_cap_comparison": comparison,
            "plan_time": timings,
            "total_s": round(total, 2),
        }
        args.json.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
