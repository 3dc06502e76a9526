"""`gpulet plan` and `gpulet peak`: plan any scenario file offline and print why; with `--url`,
the live cluster behind a router instead (common/cli/operator.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from router.scheduling.offline import (
    find_peak,
    load_cpu_profile,
    open_scenario,
    plan_at,
    schedulers_named,
    setting_for,
)
from router.scheduling.report import peak_table, plan_json, plan_text
from router.scheduling.schedulers import SCHEDULERS, SearchTooLarge
from router.scheduling.types import PlanConfig


def add_parsers(sub: Any) -> None:
    plan = sub.add_parser("plan", help="plan a scenario file offline and explain the placement "
                          "(--url: the running plan, predicted)")  # fmt: skip
    plan.add_argument("scenario", type=Path, nargs="?",
                      help="a scenario TOML (common/data/scenarios format)")  # fmt: skip
    plan.add_argument("--scheduler", default="gpulet+int", choices=SCHEDULERS)
    plan.add_argument(
        "--rate", type=float, default=None,
        help="sweep rate r (per-model rate = weight x r); default: the scenario's step",
    )  # fmt: skip
    _common(plan)
    peak = sub.add_parser("peak", help="largest sweep rate with a feasible plan (--url: the "
                          "largest equal rate the live cluster carries)")  # fmt: skip
    peak.add_argument("scenario", type=Path, nargs="?")
    peak.add_argument("--scheduler", default="all", help=f"all, or one of {', '.join(SCHEDULERS)}")
    _common(peak)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-gpulets", type=int, default=2,
                        help="gpu-lets per device (the original: 2)")  # fmt: skip
    parser.add_argument("--devices", type=int, default=None, help="override the device count")
    parser.add_argument(
        "--profile-json", type=Path, default=None,
        help="a measured profile (gpulet profile --json) for cpu scenarios",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--url", default=None, metavar="URL",
        help="a running router (e.g. http://127.0.0.1:8000) instead of a scenario: its agents' "
        "devices, profile, SLOs and scheduler; the flags above are for scenario files",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if (args.scenario is None) == (args.url is None):
        print(f"gpulet {args.command}: give a scenario file or --url URL of a running router "
              "(one of them)", file=sys.stderr)  # fmt: skip
        return 2
    if args.url is not None:
        from common.cli.operator import run_live

        return run_live(args)
    try:
        scenario = open_scenario(args.scenario)
        profile = load_cpu_profile(args.profile_json) if args.profile_json else None
        if scenario.kind == "cpu" and profile is None:
            print(
                f"{scenario.name} runs on CPUs: pass --profile-json FILE with a measured profile "
                "(make one with `gpulet profile --json FILE`)",
                file=sys.stderr,
            )
            return 2
        setting = setting_for(scenario, profile, args.devices)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gpulet {args.command}: {exc}", file=sys.stderr)
        return 2
    config = replace(PlanConfig(), max_gpulets_per_device=args.max_gpulets)
    if args.command == "plan":
        rate = args.rate if args.rate is not None else scenario.step_rps
        try:
            result = plan_at(setting, args.scheduler, rate, config)
        except SearchTooLarge as exc:
            print(f"gpulet plan: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(orjson.dumps({"rate": rate, **plan_json(result)}).decode())
        else:
            where = f"{len(setting.devices)} x {setting.profile.name}"
            print(f"{scenario.name} at r = {rate:g} on {where}")
            print(plan_text(result))
        return 0 if result.feasible else 1
    try:
        names = schedulers_named(args.scheduler)
    except ValueError as exc:
        print(f"gpulet peak: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        row = find_peak(setting, name, config)
        rows.append({"scenario": scenario.name, "scheduler": name, "peak_rps": row.peak_rps,
                     "plans": row.plans, "seconds": round(row.seconds, 3)})  # fmt: skip
    if args.json:
        print(orjson.dumps(rows).decode())
    else:
        print(peak_table(rows))
    return 0
