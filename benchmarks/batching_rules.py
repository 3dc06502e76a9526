"""The two batching rules side by side: work-conserving (the default) and the duty-cycle rule
before it, on a simulated scenario at low load, at its measured peak and at 3x overload.

    python benchmarks/batching_rules.py --peak R [--repeats 3] [--duration 30] [--json out.json]

R is the scenario's measured peak r (benchmarks/e2e_peak.py), in its own units. Each (rule,
load) pair is a fresh `gpulet up` at the product's defaults but GPULET_BATCHING, driven by the
same seeded Poisson arrivals (benchmarks/overload.py's run): goodput, SLO attainment of what
was sent, p50/p99 of the answers and how refusals were answered. The issue keeps the
work-conserving rule as the default only if it is at least as good at all three loads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from overload import DEFAULT_SCENARIO, run

RULES = ("work-conserving", "duty-cycle")
LOADS = {"low": 0.1, "peak": 1.0, "overload": 3.0}


def one(args: argparse.Namespace, rule: str, factor: float, seed: int, log: Path) -> dict[str, Any]:
    asked = argparse.Namespace(scenario=args.scenario, peak=args.peak, factor=factor,
                               duration=args.duration, time_scale=args.time_scale, seed=seed,
                               deadline_factor=2.0, batching=rule)  # fmt: skip
    figures = run(asked, log)
    sent = max(1, figures["sent"])
    refusal = figures["refusal_latency_ms"] or {}
    return {
        "goodput_rps": figures["goodput_rps"],
        "attainment": figures["ok"] / sent,
        "late": figures["late"],
        "errors": figures["errors"],
        "admitted_p99_over_slo_worst": max(p99 / slo for p99, slo in
                                           figures["admitted_p99_ms_vs_slo"].values()),
        "refusal_p99_ms": refusal.get("p99"),
    }  # fmt: skip


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--peak", type=float, required=True, help="measured peak r")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--time-scale", type=float, default=48.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="gpulet-batching-rules-"))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {r: {n: [] for n in LOADS} for r in RULES}
    for repeat in range(args.repeats):
        for name, factor in LOADS.items():
            for rule in RULES:  # both rules at one load, back to back, same arrivals
                got = one(args, rule, factor, repeat, logs / f"{rule}-{name}-{repeat}.log")
                results[rule][name].append(got)
                print(f"repeat {repeat + 1} {name:8s} {rule:15s} {got}", flush=True)
    lines = [f"{args.scenario.stem}, peak r = {args.peak:g}, K = {args.time_scale:g}, "
             f"{args.duration:g} s a run; median [min-max] over {args.repeats} repeats"]
    for name in LOADS:
        for rule in RULES:
            runs = results[rule][name]
            lines.append(
                f"  {name:8s} {rule:15s} goodput {spread([r['goodput_rps'] for r in runs])}/s  "
                f"attainment {spread([r['attainment'] for r in runs])}  worst admitted p99/SLO "
                f"{spread([r['admitted_p99_over_slo_worst'] for r in runs])}"
            )
    print("\n".join(lines))
    if args.json is not None:
        data = {"command": " ".join(sys.argv), "results": results, "summary": lines}
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
