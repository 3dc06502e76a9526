"""Serving cost in the default mode, against in-process ONNX Runtime on the same cores.

Run: `python benchmarks/serving.py [--repeats 3] [--modes default,duty-cycle,via-agent]
[--json out.json]`.

Per repeat and mode, a fresh `gpulet up --models noop,resnet18 --no-build` (the default plan a
user gets; `duty-cycle` adds GPULET_BATCHING=duty-cycle, the rule before work-conserving
dispatch; `via-agent` adds GPULET_DIRECT_TO_WORKERS=false, every batch through the agent's
HTTP hop as before the direct path), then:
  1. closed loop at 1, 8 and 64 clients (aiohttp, this process), POST /v1/infer batch 1 with an
     SLO both paths meet (SLO_MS): noop as nested lists, resnet18 as base64;
  2. noop with wrk (if installed) for WRK_S each: 64 connections (req/s) and 1 connection
     (p50), the two figures the issue compares;
  3. noop at 1,000 clients with a 1 s SLO (aiohttp) for FLOOD_S: the share answered 200 within
     1 s, and how fast the rest were refused;
and once per repeat, in-process (overhead.measure_raw: a child pinned to the gpu-let's cores,
the worker's session options) at 1, 8 and 64 threads, and the body decode time of the resnet18
request (router.http.codec, in this process). Figures are medians with [min-max] over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

# Run as a script: this folder is on sys.path, so the sibling modules import by name.
from overhead import Spread, make_inputs, measure_raw
from system import gpulet_up, http_get

from common.models import CATALOG
from common.settings import CommonSettings
from loadgen.closed_loop import closed_loop, percentile

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("noop", "resnet18")
CONCURRENCIES = (1, 8, 64)
SLO_MS = {"noop": 1_000.0, "resnet18": 20_000.0}  # both paths meet these at c=64
REQUESTS = {"noop": {1: 2000, 8: 3000, 64: 4000}, "resnet18": {1: 150, 8: 200, 64: 400}}
WRK_S = 10
FLOOD_CLIENTS = 1000
FLOOD_SLO_MS = 1000.0
FLOOD_S = 15.0
FAST_REFUSAL_MS = 50.0
MODES: dict[str, dict[str, str]] = {
    "default": {},
    "duty-cycle": {"GPULET_BATCHING": "duty-cycle"},
    "via-agent": {"GPULET_DIRECT_TO_WORKERS": "false"},  # every batch through the agent's hop
}
NOOP_ADDED_P50_GOAL_MS = 1.0
RESNET18_P50_GOAL = 1.1  # x (in-process + body decode)
NOOP_C64_BEFORE_RPS = 2415.0  # the wrk figure for the code before this change


def body(model: str, slo_ms: float) -> bytes:
    inputs = make_inputs(CATALOG[model])
    encoded: dict[str, Any] = {}
    for name, array in inputs.items():
        encoded[name] = array.tolist() if model == "noop" else {
            "shape": list(array.shape), "dtype": str(array.dtype),
            "data": base64.b64encode(array.tobytes()).decode(),
        }  # fmt: skip
    return orjson.dumps({"model": model, "inputs": encoded, "slo_ms": slo_ms})


def decode_ms(payload: bytes, runs: int = 50) -> float:
    """The router's parse + decode of one request body, median of `runs`, in this process."""
    from router.http import codec

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        codec.decode_request(codec.parse_body(payload), CATALOG, max_batch=64)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def closed(base: str, payload: bytes, c: int, n: int) -> dict[str, Any]:
    result = asyncio.run(closed_loop(f"{base}/v1/infer", payload, concurrency=c, requests=n,
                                     warmup=max(20, 2 * c)))  # fmt: skip
    ok = [lat for lat, s in zip(result.latencies_ms, result.codes, strict=True) if s == 200]
    return {"p50_ms": percentile(ok, 50) if ok else None, "p99_ms": percentile(ok, 99) if ok
            else None, "rps": result.ok / result.elapsed_s, "non_ok": result.non_ok}  # fmt: skip


def flood_binary(tmp: Path) -> Path:
    """benchmarks/flood.c, compiled once per run (a C client: at 1,000 connections a Python
    one on these 2 cores would measure itself)."""
    binary = tmp / "flood"
    if not binary.exists():
        subprocess.run(["cc", "-O2", "-o", str(binary), str(REPO_ROOT / "benchmarks" / "flood.c")],
                       check=True)  # fmt: skip
    return binary


def flood(base: str, tmp: Path) -> dict[str, Any]:
    """noop from FLOOD_CLIENTS connections, SLO 1 s, for FLOOD_S: who got 200 within the SLO,
    and how fast the others were refused (client-side latency, connect to answer)."""
    payload, answers = tmp / "flood-body.json", tmp / "flood-answers.txt"
    payload.write_bytes(body("noop", FLOOD_SLO_MS))
    host, port = base.removeprefix("http://").split(":")
    subprocess.run([str(flood_binary(tmp)), host, port, "/v1/infer", str(payload),
                    str(FLOOD_CLIENTS), str(FLOOD_S), str(answers)], check=True)  # fmt: skip
    pairs = [(int(s), int(us) / 1000) for s, us in
             (line.split() for line in answers.read_text().splitlines())]  # fmt: skip
    within = sum(1 for s, lat in pairs if s == 200 and lat <= FLOOD_SLO_MS)
    refused = [lat for s, lat in pairs if s != 200]
    statuses: dict[int, int] = {}
    for s, _ in pairs:
        statuses[s] = statuses.get(s, 0) + 1
    return {"requests": len(pairs), "ok_within_slo_share": within / max(1, len(pairs)),
            "ok_rps": statuses.get(200, 0) / FLOOD_S, "statuses": statuses,
            "refused_p99_ms": percentile(refused, 99) if refused else None,
            "refused_within_50ms_share": sum(1 for r in refused if r <= FAST_REFUSAL_MS)
            / len(refused) if refused else None}  # fmt: skip


def wrk(base: str, connections: int, threads: int) -> tuple[float, float] | None:
    """noop at `connections` for WRK_S: (requests/s, p50 ms), or None without wrk."""
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {body('noop', SLO_MS['noop']).decode()!r}\n")  # fmt: skip
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{WRK_S}s",
                              "--latency", "-s", script.name, f"{base}/v1/infer"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        print(f"    wrk: {non_2xx.group(1)} non-2xx answers", flush=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if rps is None or p50 is None:
        return None
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return float(rps.group(1)), float(p50.group(1)) * scale


def cores_of(base: str) -> dict[str, tuple[int, ...]]:
    _, cluster = http_get(f"{base}/v1/cluster")
    return {m: tuple(g["cores"]) for a in cluster["agents"] for g in a["gpulets"]
            for m in g["models"]}  # fmt: skip


def run_mode(mode: str, tmp: Path, i: int) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    log = tmp / f"{mode}-{i}.log"
    figures: dict[str, Any] = {}
    args = ["--models", ",".join(MODELS), "--no-build"]
    with gpulet_up(args, MODES[mode], log) as (base, _):
        cores = cores_of(base)
        for model in MODELS:
            payload = body(model, SLO_MS[model])
            for c in CONCURRENCIES:
                figures[f"{model}/c{c}"] = closed(base, payload, c, REQUESTS[model][c])
                print(f"    {mode} {model} c={c}: {figures[f'{model}/c{c}']}", flush=True)
        c64 = wrk(base, 64, 2)
        figures["noop/wrk-c64-rps"] = c64[0] if c64 else None
        # the issue's own measurement of a lone request: wrk -t1 -c1
        c1 = wrk(base, 1, 1)
        figures["noop/wrk-c1-p50-ms"] = c1[1] if c1 else None
        print(f"    {mode} wrk c=1 p50 {figures['noop/wrk-c1-p50-ms']} ms", flush=True)
        figures["noop/flood"] = flood(base, tmp)
        print(f"    {mode} wrk c=64 {figures['noop/wrk-c64-rps']} req/s; flood "
              f"{figures['noop/flood']}", flush=True)  # fmt: skip
    return figures, cores


def raw(cores: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    from common.modelzoo.cache import onnx_path

    model_dir = CommonSettings().model_dir
    found = {}
    for model in MODELS:
        runs = {c: REQUESTS[model][c] for c in CONCURRENCIES}
        stats = measure_raw(model, onnx_path(model_dir, model), cores[model], runs)
        for c, s in stats.items():
            found[f"{model}/c{c}"] = {"p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "rps": s.rps}
    return found


def summary(repeats: Sequence[Mapping[str, Any]], modes: Sequence[str]) -> list[str]:
    lines = []
    for mode in modes:
        lines.append(f"{mode}:")
        for model in MODELS:
            for c in CONCURRENCIES:
                key = f"{model}/c{c}"
                mine = [r[mode][key] for r in repeats]
                base = [r["raw"][key] for r in repeats]
                p50 = Spread.of([m["p50_ms"] or float("nan") for m in mine])
                rps = Spread.of([m["rps"] for m in mine])
                ratio = Spread.of([m["rps"] / b["rps"] for m, b in zip(mine, base, strict=True)])
                raw_p50 = Spread.of([b["p50_ms"] for b in base])
                lines.append(f"  {key:12s} p50 {p50.show(3)} ms (in-process {raw_p50.show(3)}),"
                             f" {rps.show(1)} req/s = {ratio.show(3)} of in-process")  # fmt: skip
        added = Spread.of([r[mode]["noop/c1"]["p50_ms"] - r["raw"]["noop/c1"]["p50_ms"]
                           for r in repeats])  # fmt: skip
        goal = "met" if added.median <= NOOP_ADDED_P50_GOAL_MS else "missed"
        lines.append(f"  noop c=1 added p50: {added.show(3)} ms (goal <= 1 ms: {goal})")
        bound = [r["raw"]["resnet18/c1"]["p50_ms"] + r["decode_ms"] for r in repeats]
        rel = Spread.of([r[mode]["resnet18/c1"]["p50_ms"] / b for r, b in
                         zip(repeats, bound, strict=True)])  # fmt: skip
        goal = "met" if rel.median <= RESNET18_P50_GOAL else "missed"
        lines.append(f"  resnet18 c=1 p50 / (in-process + decode): {rel.show(3)} (goal <= 1.1: "
                     f"{goal})")  # fmt: skip
        wrk_rps = [r[mode]["noop/wrk-c64-rps"] for r in repeats if r[mode]["noop/wrk-c64-rps"]]
        if wrk_rps:
            spread = Spread.of(wrk_rps)
            lines.append(f"  noop wrk c=64: {spread.show(0)} req/s (before: "
                         f"{NOOP_C64_BEFORE_RPS:.0f})")  # fmt: skip
        wrk_p50 = [r[mode].get("noop/wrk-c1-p50-ms") for r in repeats]
        if all(wrk_p50):
            added = Spread.of([p - r["raw"]["noop/c1"]["p50_ms"]
                               for p, r in zip(wrk_p50, repeats, strict=True)])  # fmt: skip
            goal = "met" if added.median <= NOOP_ADDED_P50_GOAL_MS else "missed"
            lines.append(f"  noop wrk -t1 -c1 added p50: {added.show(3)} ms (goal <= 1 ms: "
                         f"{goal})")  # fmt: skip
        share = Spread.of([r[mode]["noop/flood"]["ok_within_slo_share"] for r in repeats])
        refused = [r[mode]["noop/flood"]["refused_p99_ms"] for r in repeats]
        lines.append(f"  noop {FLOOD_CLIENTS} clients, 1 s SLO: {share.show(3)} answered 200 "
                     f"within the SLO; refusals' p99 {refused} ms")  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="default,duty-cycle")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {sorted(MODES)}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    repeats = []
    with tempfile.TemporaryDirectory(prefix="gpulet-serving-") as tmp:
        for i in range(args.repeats):
            repeat: dict[str, Any] = {"decode_ms": decode_ms(body("resnet18", 200.0))}
            cores: dict[str, tuple[int, ...]] = {}
            for mode in modes:
                repeat[mode], cores = run_mode(mode, Path(tmp), i)
            repeat["raw"] = raw(cores)
            repeat["cores"] = {m: list(c) for m, c in cores.items()}
            repeats.append(repeat)
            print(f"repeat {i + 1}/{args.repeats} done", flush=True)
    lines = summary(repeats, modes)
    print("\n".join([f"median [min-max] over {args.repeats} repeats; load average before: {load}",
                     *lines]))  # fmt: skip
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(
            {"command": " ".join(sys.argv), "repeats": repeats, "summary": lines,
             "load_before": load}, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
