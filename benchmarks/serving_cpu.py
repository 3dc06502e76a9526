"""Serving's CPU per request: router and agent process CPU over a closed loop of one model.

Run: `python benchmarks/serving_cpu.py [--repeats 3] [--json out.json]`. Per repeat and path,
starts `gpulet up --models noop,mobilenet_v2,resnet18 --no-build` with the static rule (one
gpu-let a model, no planning to wait for), sends each model's requests from 4 clients, and
divides the router's and the agent's CPU time (psutil, user + system) by the requests, fitted
as a line over the body size. Paths: `direct` (the default: batches to the workers' own
sockets) gives router/scheduling/serving_cpu.py's SERVING_FIXED_MS and SERVING_MS_PER_MB;
`via-agent` (GPULET_DIRECT_TO_WORKERS=false) minus `direct` gives AGENT_HOP_FIXED_MS and
AGENT_HOP_MS_PER_MB. Medians with [min-max] over the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import gpulet_up

from common.models import CATALOG
from loadgen.closed_loop import closed_loop

CASES = (("noop", "json", 3000), ("noop", "base64", 3000), ("mobilenet_v2", "base64", 600),
         ("resnet18", "base64", 300), ("mobilenet_v2", "json", 200))  # fmt: skip
CLIENTS = 4
PATHS = {"direct": {}, "via-agent": {"GPULET_DIRECT_TO_WORKERS": "false"}}


def body(model: str, form: str) -> bytes:
    encoded: dict[str, Any] = {}
    for t in CATALOG[model].inputs:
        array = np.zeros((1, *t.item_shape), t.dtype)
        encoded[t.name] = array.tolist() if form == "json" else {
            "shape": list(array.shape), "dtype": t.dtype,
            "data": base64.b64encode(array.tobytes()).decode(),
        }  # fmt: skip
    return orjson.dumps({"model": model, "inputs": encoded, "slo_ms": 10_000})


def serving_processes(up_pid: int) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(up_pid).children(recursive=True):
        command = child.cmdline()
        if command[-1:] in (["router"], ["agent"]):
            found[command[-1]] = child
    return found


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(env: dict[str, str]) -> dict[str, Any]:
    """One system, every case: rows and the fitted line over base64 bodies."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, gpulet_up(
        ["--models", "noop,mobilenet_v2,resnet18", "--no-build"],
        {"GPULET_SCHEDULER": "static", **env}, Path(tmp) / "up.log",
    ) as (base, up_pid):  # fmt: skip
        processes = serving_processes(up_pid)
        for model, form, requests in CASES:
            payload = body(model, form)
            before = {name: cpu_s(p) for name, p in processes.items()}
            result = asyncio.run(closed_loop(f"{base}/v1/infer", payload, concurrency=CLIENTS,
                                             requests=requests, warmup=20))  # fmt: skip
            per_request = {name: 1000 * (cpu_s(p) - before[name]) / requests
                           for name, p in processes.items()}  # fmt: skip
            rows.append({"model": model, "form": form, "body_bytes": len(payload),
                         "cpu_ms": per_request, "total_ms": sum(per_request.values()),
                         "statuses": {str(k): v for k, v in result.statuses.items()}})
            print(f"  {model:13s} {form:6s} {len(payload):8d} B  router "
                  f"{per_request['router']:.2f} + agent {per_request['agent']:.2f} = "
                  f"{sum(per_request.values()):.2f} ms CPU a request", flush=True)  # fmt: skip
    base64_rows = [r for r in rows if r["form"] == "base64"]
    sizes = np.array([r["body_bytes"] / 1e6 for r in base64_rows])
    costs = np.array([r["total_ms"] for r in base64_rows])
    slope, fixed = np.polyfit(sizes, costs, 1)
    return {"rows": rows, "fixed_ms": float(fixed), "per_mb_ms": float(slope)}


def spread(values: Sequence[float]) -> str:
    return f"{float(np.median(values)):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for i in range(args.repeats):
        for path, env in PATHS.items():  # side by side in each repeat
            print(f"repeat {i + 1}/{args.repeats}, {path}:", flush=True)
            runs[path].append(measure(env))
    lines = []
    for path, fits in runs.items():
        lines.append(f"{path}: base64 bodies {spread([f['fixed_ms'] for f in fits])} ms + "
                     f"{spread([f['per_mb_ms'] for f in fits])} ms per MB (router + agent)")
    hop = list(zip(runs["via-agent"], runs["direct"], strict=True))
    lines.append(f"the agent's hop: {spread([v['fixed_ms'] - d['fixed_ms'] for v, d in hop])} ms"
                 f" + {spread([v['per_mb_ms'] - d['per_mb_ms'] for v, d in hop])} ms per MB")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps({"command": " ".join(sys.argv), "runs": runs,
                                            "summary": lines}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
