"""Overload: a simulated scenario driven at a multiple of its measured peak for a minute.

Goals (issue 5): the excess is answered 429/503/504 within 50 ms; admitted requests' p99 stays
within their SLO; the router's memory stays flat (RSS at start and end, sampled through the run).

    python benchmarks/overload.py --peak R [--factor 3] [--duration 60] [--time-scale 10]

R is the measured peak r of the scenario (benchmarks/e2e_peak.py), in the scenario's own units
(per-model rate = weight x r, before the time scale divides it). The system runs with its
defaults (gpulet+int, following the measured rates): the first plan is the most the GPUs carry,
and re-plans for more find no feasible plan, so the overload meets that plan.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import gpulet_up, router_pid

from common.scenarios import PACKAGED_SCENARIOS, load_scenario
from loadgen.arrivals import schedule
from loadgen.bodies import request_bodies
from loadgen.report import Record, Spread, build_report
from loadgen.runner import RunConfig, run_open_loop

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = PACKAGED_SCENARIOS / "a100-scen3.toml"
REFUSALS = (429, 503, 504)
FAST_REFUSAL_MS = 50.0  # the goal for answering the excess
RSS_SAMPLE_S = 1.0


def refusal_spread(records: Sequence[Record]) -> Spread | None:
    return Spread.of([r.latency_ms for r in records
                      if r.status in REFUSALS and r.latency_ms is not None])  # fmt: skip


def rss_summary(rss: Sequence[float]) -> dict[str, Any]:
    """Start, end, max, and the growth over the second half of the run (flat: ~0), from
    samples every RSS_SAMPLE_S; the samples are kept, rounded, for a plot."""
    half = rss[len(rss) // 2 :]
    minutes = max(len(half) - 1, 1) * RSS_SAMPLE_S / 60
    return {"start": rss[0], "end": rss[-1], "max": max(rss), "samples": len(rss),
            "second_half_mib_per_min": (half[-1] - half[0]) / minutes,
            "every_s": RSS_SAMPLE_S, "series": [round(r, 1) for r in rss]}  # fmt: skip


def refusals_by_stage(records: Sequence[Record]) -> dict[str, int]:
    """How many refusals came fast (within FAST_REFUSAL_MS) and how many after waiting."""
    late = [r for r in records if r.status in REFUSALS and r.latency_ms is not None]
    fast = sum(1 for r in late if r.latency_ms is not None and r.latency_ms <= FAST_REFUSAL_MS)
    return {"fast": fast, "after_waiting": len(late) - fast}


def admitted_p99(records: Sequence[Record]) -> dict[str, tuple[float, float]]:
    """Model -> (p99 of 200 answers, SLO)."""
    out = {}
    for model in sorted({r.model for r in records}):
        ok = [r.latency_ms for r in records
              if r.model == model and r.status == 200 and r.latency_ms is not None]  # fmt: skip
        spread = Spread.of(ok)
        slo = next(r.slo_ms for r in records if r.model == model)
        out[model] = (spread.p99_ms if spread else float("nan"), slo)
    return out


def run(args: argparse.Namespace, log_path: Path) -> dict[str, Any]:
    import psutil

    scenario = load_scenario(args.scenario).time_scaled(args.time_scale)
    rate = args.peak * args.factor
    arrivals = schedule(scenario, rate, args.duration, np.random.default_rng(args.seed))
    up_args = ["--scenario", str(args.scenario), "--time-scale", f"{args.time_scale:g}"]
    env = {"GPULET_LOG_LEVEL": "WARNING", "GPULET_DEADLINE_FACTOR": f"{args.deadline_factor:g}",
           "GPULET_BATCHING": args.batching}  # fmt: skip
    with gpulet_up(up_args, env, log_path) as (base, up_pid):
        router = psutil.Process(router_pid(up_pid))
        rss: list[float] = [router.memory_info().rss / 2**20]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(RSS_SAMPLE_S):
                rss.append(router.memory_info().rss / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        config = RunConfig(
            url=base,
            bodies=request_bodies(scenario),
            slo_ms={m.name: m.slo_ms for m in scenario.models},
            progress=False,
        )
        result = asyncio.run(run_open_loop(arrivals, config))
        done.set()
        sampler.join()
        rss.append(router.memory_info().rss / 2**20)
    warmup = min(5.0, args.duration / 10)
    measured = [r for r in result.records if r.scheduled_s >= warmup]
    report = build_report(result.records, warmup_s=warmup, duration_s=args.duration,
                          models={m.name: m.slo_ms for m in scenario.models})  # fmt: skip
    refusals = refusal_spread(measured)
    return {
        "rate_r": rate, "offered_rps": len(arrivals) / args.duration,
        "sent": report.total.sent, "ok": report.total.ok, "late": report.total.late,
        "errors": dict(report.total.errors), "goodput_rps": report.total.goodput_rps,
        "refusal_latency_ms": None if refusals is None else {
            "count": refusals.count, "p50": refusals.p50_ms, "p99": refusals.p99_ms,
            "max": refusals.max_ms, **refusals_by_stage(measured)},
        "admitted_p99_ms_vs_slo": admitted_p99(measured),
        "router_rss_mib": rss_summary(rss),
        "sender_lateness_p99_ms": report.lateness.p99_ms if report.lateness else None,
    }  # fmt: skip


def render(figures: dict[str, Any], args: argparse.Namespace) -> str:
    refusal = figures["refusal_latency_ms"]
    lines = [
        f"{args.scenario.stem} at {args.factor:g}x the peak r={args.peak:g} (time scale "
        f"K={args.time_scale:g}, deadline {args.deadline_factor:g} x SLO): "
        f"{figures['offered_rps']:.0f} req/s offered for {args.duration:g} s",
        f"  sent {figures['sent']}, ok {figures['ok']}, late {figures['late']}, errors "
        f"{figures['errors']}, goodput {figures['goodput_rps']:.1f}/s",
        "  refusals (429/503/504): " + ("none" if refusal is None else
            f"{refusal['count']} answered in p50 {refusal['p50']:.1f} ms, p99 "
            f"{refusal['p99']:.1f} ms, max {refusal['max']:.1f} ms (goal p99 <= 50 ms); "
            f"{refusal['fast']} within 50 ms, {refusal['after_waiting']} after"),
    ]  # fmt: skip
    for model, (p99, slo) in figures["admitted_p99_ms_vs_slo"].items():
        lines.append(f"  admitted {model}: p99 {p99:.1f} ms, SLO {slo:g} ms "
                     f"({'within' if p99 <= slo else 'OVER'})")  # fmt: skip
    rss = figures["router_rss_mib"]
    lines.append(f"  router RSS: {rss['start']:.1f} MiB at start, {rss['end']:.1f} MiB at end, "
                 f"max {rss['max']:.1f} MiB over {rss['samples']} samples; second half "
                 f"{rss['second_half_mib_per_min']:+.1f} MiB/min")  # fmt: skip
    lateness = figures["sender_lateness_p99_ms"]
    lines.append("  loadgen lateness p99 " + ("-" if lateness is None else f"{lateness:.2f} ms"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--peak", type=float, required=True, help="measured peak r")
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deadline-factor",
        type=float,
        default=2.0,
        help="GPULET_DEADLINE_FACTOR: deadline = SLO x this (default 2)",
    )
    parser.add_argument("--batching", default="work-conserving",
                        choices=("work-conserving", "duty-cycle"),
                        help="GPULET_BATCHING (default: the product's, work-conserving)")
    parser.add_argument("--repeats", type=int, default=1, help="runs, each a fresh system")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="gpulet-overload-"))
    print(f"system logs in {logs}", file=sys.stderr)
    runs = []
    for repeat in range(args.repeats):
        figures = run(args, logs / f"up-{repeat}.log")
        print(render(figures, args), flush=True)
        runs.append(figures)
    summary = spread_of(runs)
    print(render_spread(summary))
    if args.json is not None:
        data = {"command": " ".join(sys.argv), **vars(args), "spread": summary, "runs": runs}
        data["scenario"] = str(args.scenario)
        data.pop("json", None)
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def spread_of(runs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """[median, min, max] over the runs of the figures the goals name."""
    columns: dict[str, list[float]] = {}
    for figures in runs:
        refusal = figures["refusal_latency_ms"] or {}
        rss = figures["router_rss_mib"]
        picked = {
            "goodput_rps": figures["goodput_rps"],
            "refusal_p99_ms": refusal.get("p99", 0.0),
            "admitted_p99_over_slo_worst": max(
                p99 / slo for p99, slo in figures["admitted_p99_ms_vs_slo"].values()
            ),
            "rss_second_half_mib_per_min": rss["second_half_mib_per_min"],
            "rss_end_mib": rss["end"],
        }
        for name, value in picked.items():
            columns.setdefault(name, []).append(float(value))
    return {name: [float(np.median(v)), min(v), max(v)] for name, v in columns.items()}


def render_spread(summary: dict[str, list[float]]) -> str:
    return "median [min-max] over the runs: " + "; ".join(
        f"{name} {mid:.2f} [{low:.2f}-{high:.2f}]" for name, (mid, low, high) in summary.items()
    )


if __name__ == "__main__":
    raise SystemExit(main())
