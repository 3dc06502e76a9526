"""Re-planning under rate steps (sim-steps): settled goodput and SLO attainment per step, time from
each step to the new placement serving, and requests lost or failed because of re-plans.

Runs `gpulet up --scenario sim-steps.toml --time-scale K` (real router, Redis and a simulated
agent with 8 GPUs, following the measured rates) and replays the scenario's trace open-loop with
the load generator in this process, then reads the router's re-plans from /v1/cluster.

    python benchmarks/replan.py [--time-scale 10] [--repeats 1] [--json PATH]

Per step: the re-plans written during it (reason, planner step, seconds from the rate step to
written and to serving); attainment over the whole step and over the settled part (from the
last of its re-plans for more capacity serving to the step's end; the whole step when none was
needed).
"Failed" counts every answer that is neither ok, late, a deadline drop (504) nor an overload
refusal (503 overloaded / client-side): what a re-plan could have caused.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import gpulet_up, http_get

from common.scenarios import PACKAGED_SCENARIOS, load_scenario
from loadgen.arrivals import schedule
from loadgen.bodies import request_bodies
from loadgen.report import Record
from loadgen.runner import START_DELAY_S, RunConfig, run_open_loop

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = PACKAGED_SCENARIOS / "sim-steps.toml"
# Answers that are the system's own policy, not a failure: deadline drops and overload refusals.
POLICY_CODES = {"deadline_exceeded", "overloaded", "client_overloaded"}


@dataclass(frozen=True)
class StepFigures:
    at_s: float
    rate_rps: float  # offered, all models
    replans: list[dict[str, Any]]  # reason, step, written_after_s, serving_after_s
    attainment: float  # the whole step
    settled_from_s: float  # seconds into the step
    settled_attainment: float
    settled_goodput_rps: float
    failed: int  # answers that are neither ok/late nor policy refusals
    codes: dict[str, int]


def step_figures(
    records: Sequence[Record], steps: Sequence[tuple[float, float]], duration_s: float,
    replans: Sequence[dict[str, Any]], wall_start_s: float,
) -> list[StepFigures]:  # fmt: skip
    """`steps`: (start s, offered req/s); `replans` as /v1/cluster lists them (wall times)."""
    out = []
    bounds = [*(s for s, _ in steps), duration_s]
    for (start, rate), end in zip(steps, bounds[1:], strict=True):
        mine = [r for r in records if start <= r.scheduled_s < end]
        events = []
        for event in replans:
            written = event["at_s"] - wall_start_s
            if not start <= written < end:
                continue
            serving = event.get("serving_at_s")
            events.append({
                "version": event["version"], "reason": event["reason"], "step": event["step"],
                "written_after_s": round(written - start, 2),
                "serving_after_s": None if serving is None else round(serving - wall_start_s
                                                                      - start, 2),
            })  # fmt: skip
        # Settled once the last re-plan for more capacity serves; shrinking ones (falls) only
        # give devices back and do not unsettle anything.
        served = [e["serving_after_s"] for e in events
                  if e["serving_after_s"] is not None and e["reason"] != "fall"]  # fmt: skip
        settled_from = max(served, default=0.0)
        settled = [r for r in mine if r.scheduled_s >= start + settled_from]
        span = max(end - start - settled_from, 1e-9)
        codes = Counter(r.code or ("ok" if r.ok else "late") for r in mine)
        failed = sum(n for c, n in codes.items() if c not in POLICY_CODES | {"ok", "late"})
        out.append(StepFigures(
            at_s=start, rate_rps=rate, replans=events,
            attainment=sum(r.ok for r in mine) / max(len(mine), 1),
            settled_from_s=round(settled_from, 2),
            settled_attainment=sum(r.ok for r in settled) / max(len(settled), 1),
            settled_goodput_rps=sum(r.ok for r in settled) / span,
            failed=failed, codes=dict(codes),
        ))  # fmt: skip
    return out


def run_once(scenario_path: Path, time_scale: float, epoch_s: float, seed: int,
             log_path: Path) -> dict[str, Any]:  # fmt: skip
    scenario = load_scenario(scenario_path).time_scaled(time_scale)
    duration_s = scenario.duration_s
    arrivals = schedule(scenario, None, duration_s, np.random.default_rng(seed))
    total_weight = sum(m.weight for m in scenario.models)
    steps = [(s.at_s, scenario.base_rps * s.multiplier * total_weight) for s in scenario.steps]
    env = {"GPULET_SCHEDULER": "gpulet+int", "GPULET_REPLAN_EPOCH_S": str(epoch_s),
           "GPULET_LOG_LEVEL": "INFO"}  # fmt: skip
    up_args = ["--scenario", str(scenario_path), "--time-scale", f"{time_scale:g}"]
    with gpulet_up(up_args, env, log_path) as (base, _):
        config = RunConfig(url=base, bodies=request_bodies(scenario),
                           slo_ms={m.name: m.slo_ms for m in scenario.models}, progress=False)
        wall_start_s = time.time() + START_DELAY_S
        result = asyncio.run(run_open_loop(arrivals, config))
        status, cluster = http_get(f"{base}/v1/cluster")
        if status != 200:
            raise RuntimeError(f"/v1/cluster answered {status}")
    figures = step_figures(result.records, steps, duration_s, cluster["replans"], wall_start_s)
    lost = sum(1 for r in result.records if r.done_s is None and r.code is None)
    return {"steps": [asdict(f) for f in figures], "sent": len(result.records), "lost": lost,
            "failed": sum(f.failed for f in figures),
            "all_replans": cluster["replans"], "wall_start_s": wall_start_s}  # fmt: skip


def render(runs: Sequence[dict[str, Any]], time_scale: float) -> str:
    lines = [f"sim-steps at time scale K={time_scale:g} (rates / K, SLOs x K); "
             f"{len(runs)} run(s)"]  # fmt: skip
    for i, run in enumerate(runs):
        lines.append(f"run {i + 1}: sent {run['sent']}, lost {run['lost']}, failed (not ok, "
                     f"late, 504 or overload) {run['failed']}")  # fmt: skip
        for step in run["steps"]:
            events = "; ".join(
                f"v{e['version']} {e['reason']}/{e['step']} written +{e['written_after_s']}s "
                f"serving +{e['serving_after_s']}s" for e in step["replans"]
            ) or "no re-plan"
            lines.append(
                f"  step at {step['at_s']:>5.0f} s, {step['rate_rps']:6.1f} req/s: attainment "
                f"{step['attainment']:.2%}, settled (from +{step['settled_from_s']}s) "
                f"{step['settled_attainment']:.2%} goodput {step['settled_goodput_rps']:.1f}/s; "
                f"{events}; codes {step['codes']}"
            )
    if len(runs) > 1:
        by_step = zip(*(r["steps"] for r in runs), strict=True)
        for steps in by_step:
            values = [s["settled_attainment"] for s in steps]
            lines.append(f"  step at {steps[0]['at_s']:.0f} s settled attainment median "
                         f"{statistics.median(values):.2%} [{min(values):.2%}-{max(values):.2%}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--epoch", type=float, default=20.0, help="GPULET_REPLAN_EPOCH_S")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    runs = []
    logs = Path(tempfile.mkdtemp(prefix="gpulet-replan-"))
    print(f"system logs in {logs}", file=sys.stderr)
    for repeat in range(args.repeats):
        runs.append(run_once(args.scenario, args.time_scale, args.epoch, repeat,
                             logs / f"up-{repeat}.log"))  # fmt: skip
    print(render(runs, args.time_scale))
    if args.json is not None:
        data = {"command": " ".join(sys.argv), "time_scale": args.time_scale,
                "epoch_s": args.epoch, "runs": runs}  # fmt: skip
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
