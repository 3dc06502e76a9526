"""`gpulet loadgen`: drive a scenario open-loop against a router; print, save and plot the report.

Wiring only: `arrivals` plans, `bodies` encodes, `runner` sends, `report` counts, `plot` draws.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadgen.arrivals import Arrival
    from loadgen.report import Report

DEFAULT_DURATION_S = 30.0  # sweep and fixed scenarios carry no duration of their own
# Warm-up by default: the smaller of WARMUP_MAX_S and WARMUP_SHARE of the run.
WARMUP_MAX_S = 2.0
WARMUP_SHARE = 0.1
EXIT_USAGE = 2
WIDE_OUTPUT = 160  # characters
EXIT_INTERRUPTED = 130


def add_parser(sub: Any) -> None:
    p = sub.add_parser("loadgen", help="send a scenario's load open-loop to a router and report")
    p.add_argument("scenario", type=Path, help="a scenario TOML (common/data/scenarios format)")
    p.add_argument("--url", required=True, help="the router, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="sweep: r (per-model rate = weight x r); trace: replaces base_rps",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds (default: the scenario's, else {DEFAULT_DURATION_S:g})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0)")
    p.add_argument(
        "--process",
        choices=("poisson", "gamma"),
        default="poisson",
        help="arrival process (default poisson)",
    )
    p.add_argument(
        "--cv",
        type=float,
        default=1.0,
        help="gamma: coefficient of variation of the gaps (default 1 = Poisson)",
    )
    p.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="FILE",
        help="send the 'timestamp model' lines of FILE instead of generated arrivals",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds left out of the report (default: min({WARMUP_MAX_S:g} s, "
        f"{WARMUP_SHARE * 100:g} %% of the run))",
    )
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of throughput and p99")
    p.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="requests in flight beyond which new ones are recorded as client_overloaded "
        "instead of sent (default 20000)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="K",
        help="the devices run K times slower than the scenario's (gpulet up --time-scale K): "
        "every rate / K, every SLO x K, a replay's timestamps x K; --rate stays in the "
        "scenario's units (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from common.scenarios import load_scenario
    from loadgen.arrivals import Arrival, read_replay, schedule
    from loadgen.bodies import request_bodies

    try:
        scenario = load_scenario(args.scenario).time_scaled(args.time_scale)
        if args.replay is not None:
            # A recording k times slower: each request k times later, so every rate / k.
            arrivals = [Arrival(a.at_s * args.time_scale, a.model)
                        for a in read_replay(args.replay)]  # fmt: skip
            unknown = sorted({a.model for a in arrivals} - {m.name for m in scenario.models})
            if unknown:
                raise ValueError(f"{args.replay}: models {unknown} are not in {scenario.name}")
            if not arrivals:
                raise ValueError(f"{args.replay}: no requests in the file")
            last_s = arrivals[-1].at_s
            duration_s = args.duration or max(1.0, float(math.ceil(last_s)))
            arrivals = [a for a in arrivals if a.at_s < duration_s]
        else:
            if scenario.mode == "fixed" and args.rate is not None:
                raise ValueError(f"{scenario.name} fixes each model's rate: --rate applies "
                                 "to sweep and trace scenarios")  # fmt: skip
            duration_s = args.duration or scenario.duration_s or DEFAULT_DURATION_S
            rng = np.random.default_rng(args.seed)
            arrivals = schedule(scenario, args.rate, duration_s, rng,
                                process=args.process, cv=args.cv)  # fmt: skip
        warmup_s = (
            args.warmup if args.warmup is not None else min(WARMUP_MAX_S, WARMUP_SHARE * duration_s)
        )
        if not 0 <= warmup_s < duration_s:
            raise ValueError(f"--warmup {warmup_s:g} must be within [0, {duration_s:g}) s")
    except (OSError, ValueError) as exc:
        print(f"gpulet loadgen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    slo_ms = {m.name: m.slo_ms for m in scenario.models}
    return _send_and_report(args, scenario.name, arrivals, request_bodies(scenario), slo_ms,
                            duration_s, warmup_s)  # fmt: skip


def _send_and_report(
    args: argparse.Namespace,
    name: str,
    arrivals: list[Arrival],
    bodies: dict[str, bytes],
    slo_ms: dict[str, float],
    duration_s: float,
    warmup_s: float,
) -> int:
    from dataclasses import replace

    from rich.console import Console

    from loadgen.report import build_report
    from loadgen.runner import RunConfig, run_open_loop

    config = RunConfig(url=args.url, bodies=bodies, slo_ms=slo_ms, progress=not args.quiet)
    if args.max_inflight is not None:
        try:
            config = replace(config, max_inflight=args.max_inflight)
        except ValueError as exc:
            print(f"gpulet loadgen: {exc}", file=sys.stderr)
            return EXIT_USAGE
    err = Console(stderr=True)
    err.print(f"{name}: {len(arrivals)} requests over {duration_s:g} s to {args.url} "
              f"({_source(args)}), warm-up {warmup_s:g} s")  # fmt: skip
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(run_open_loop(arrivals, config))
    except KeyboardInterrupt:
        err.print("interrupted: no report")
        return EXIT_INTERRUPTED
    report = build_report(result.records, warmup_s=warmup_s, duration_s=duration_s,
                          models=slo_ms, replans=result.replans)  # fmt: skip
    sender = {
        "scheduled": result.scheduled,
        "issued": result.issued,
        "send_span_s": result.send_span_s,
        "send_rate_rps": result.send_rate_rps,
        "elapsed_s": result.elapsed_s,
        "cpu_s": result.cpu_s,
        "cpu_share": result.cpu_s / result.elapsed_s if result.elapsed_s > 0 else 0.0,
    }
    _print_report(report, sender)
    if args.out is not None:
        import orjson

        meta = {"scenario": name, "url": args.url, "source": _source(args), "seed": args.seed,
                "time_scale": args.time_scale}  # fmt: skip
        data = {**meta, **report.to_json(), "sender": sender}
        args.out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    if args.plot is not None:
        from loadgen.plot import PlotUnavailable, write_plot

        try:
            write_plot(report, args.plot, title=f"{name} ({_source(args)})")
        except PlotUnavailable as exc:
            err.print(f"gpulet loadgen: {exc}")
            return EXIT_USAGE
    return 0


def _source(args: argparse.Namespace) -> str:
    scale = "" if args.time_scale == 1 else f", time scale {args.time_scale:g}"
    if args.replay is not None:
        return f"replay of {args.replay}{scale}"
    rate = "" if args.rate is None else f"r={args.rate:g}, "
    process = "poisson" if args.process == "poisson" else f"gamma cv={args.cv:g}"
    return f"{rate}{process}, seed {args.seed}{scale}"


def _loop_factory() -> Any:
    """uvloop where installed (uvicorn[standard] brings it): cheaper sends per core."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _print_report(report: Report, sender: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "SLO ms", "sent", "ok", "late", "errors", "goodput/s", "attain",
                  "p50 ms", "p90 ms", "p99 ms", "max ms", title=f"measured "
                  f"{report.warmup_s:g}-{report.duration_s:g} s")  # fmt: skip
    for stats in (*report.models, report.total):
        errors = ", ".join(f"{code} {n}" for code, n in stats.errors.items()) or "-"
        lat = stats.latency
        spread = [f"{v:.1f}" for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.max_ms)] if lat \
            else ["-"] * 4  # fmt: skip
        slo = f"{stats.slo_ms:g}" if stats.slo_ms is not None else ""
        table.add_row(stats.model, slo, str(stats.sent), str(stats.ok), str(stats.late), errors,
                      f"{stats.goodput_rps:.1f}", f"{stats.attainment:.1%}", *spread)  # fmt: skip
    out = Console()
    if not out.is_terminal:
        out = Console(width=WIDE_OUTPUT)  # a file or pipe: keep the table's columns whole
    out.print(table)
    lateness = report.lateness
    late = (f"lateness p50 {lateness.p50_ms:.2f} ms, p99 {lateness.p99_ms:.2f} ms, max "
            f"{lateness.max_ms:.1f} ms" if lateness else "no sends")  # fmt: skip
    out.print(f"sender: {sender['issued']:.0f} of {sender['scheduled']:.0f} sent at "
              f"{sender['send_rate_rps']:.0f} req/s; {late}; CPU {sender['cpu_s']:.1f} s "
              f"({sender['cpu_share']:.0%} of one core)")  # fmt: skip
    if report.replans:
        events = ", ".join(f"v{r.version} at {r.at_s:.1f} s" for r in report.replans)
        out.print(f"re-plans: {events}")
