"""How long the router's event loop waits while a plan is searched in a helper thread.

Run: `python benchmarks/planning_lag.py [--repeats 5] [--json out.json]`. Plans the packaged
a100-scen3 scenario on its simulated devices (the equal-rate peak search a router runs when no
rates are declared) in a thread, as the control loop does, while the event loop wakes every
1 ms and records by how much each wake is late: what a request waiting on the loop loses at
each of its steps. Once with CPython's default switch interval and once with the one the router
and agent set (common/serving_process.py), alternating, `--repeats` times each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.cluster import AgentInfo, DeviceInfo
from common.interference_models import fitted_for
from common.scenarios import PACKAGED_SCENARIOS, load_scenario
from common.serving_process import SWITCH_INTERVAL_S
from router.scheduling.live import plan_live

SCENARIO = "a100-scen3"
TICK_S = 0.001
DEFAULT_SWITCH_INTERVAL_S = 0.005  # CPython's


async def one_plan(switch_interval_s: float) -> dict[str, float]:
    scenario = load_scenario(PACKAGED_SCENARIOS / f"{SCENARIO}.toml")
    profile = scenario.profile()
    devices = tuple(DeviceInfo(f"sim{i}", "simulated", ()) for i in range(scenario.devices))
    agents = [AgentInfo("bench", "http://bench", "host", 1, devices, time.time())]
    slos = {m.name: m.slo_ms for m in scenario.models}
    interference = fitted_for(scenario.profile_name or "")
    sys.setswitchinterval(switch_interval_s)
    try:
        started = time.perf_counter()
        search = asyncio.create_task(asyncio.to_thread(
            plan_live, agents, profile, slos, {}, "gpulet+int", interference=interference,
        ))  # fmt: skip
        lags_ms = []
        while not search.done():
            tick = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags_ms.append((time.perf_counter() - tick - TICK_S) * 1000)
        plan_ms = (time.perf_counter() - started) * 1000
        assert (await search) is not None
    finally:
        sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL_S)
    lags = np.asarray(lags_ms)
    return {"plan_ms": plan_ms, "lag_p50_ms": float(np.percentile(lags, 50)),
            "lag_p99_ms": float(np.percentile(lags, 99)), "wakes": float(len(lags))}  # fmt: skip


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    settings = {"default": DEFAULT_SWITCH_INTERVAL_S, "serving": SWITCH_INTERVAL_S}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, interval in settings.items():
            runs[name].append(asyncio.run(one_plan(interval)))
    print(f"{SCENARIO} plan in a helper thread; loop wake lag, median [min-max] of "
          f"{args.repeats} plans")  # fmt: skip
    print(f"{'switch interval':<22} {'plan ms':>22} {'lag p50 ms':>20} {'lag p99 ms':>20}")
    summary: dict[str, Any] = {}
    for name, interval in settings.items():
        rows = runs[name]
        summary[name] = {"switch_interval_s": interval, "runs": rows}
        print(f"{name + f' ({interval * 1000:g} ms)':<22} "
              f"{spread([r['plan_ms'] for r in rows]):>22} "
              f"{spread([r['lag_p50_ms'] for r in rows]):>20} "
              f"{spread([r['lag_p99_ms'] for r in rows]):>20}")  # fmt: skip
    ratio = [s["plan_ms"] / d["plan_ms"] for s, d in zip(runs["serving"], runs["default"],
                                                         strict=True)]  # fmt: skip
    print(f"plan time, serving / default: {spread(ratio)}")
    if args.json:
        args.json.write_bytes(orjson.dumps({"scenario": SCENARIO, "repeats": args.repeats,
                                            **summary}, option=orjson.OPT_INDENT_2))  # fmt: skip


if __name__ == "__main__":
    main()
