"""Serving overhead: ONNX Runtime in-process vs the same model via router -> agent -> worker.

Run: `python benchmarks/overhead.py [--repeats 3] [--requests N] [--json out.json]` (see --help).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import orjson

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import gpulet_up, http_get

from common.models import CATALOG, ModelSpec
from common.settings import CommonSettings
from loadgen.closed_loop import LoadResult, closed_loop, percentile

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("noop", "resnet18")
CONCURRENCIES = (1, 32)
# Far above any latency here, so the router's deadline (slo_ms x deadline_factor) never fires.
BENCH_SLO_MS = 60_000.0
RAW_WARMUP_RUNS = 20
INPUT_SEED = 20261124
# Goals from the issue: serving adds at most 1 ms p50 to noop; resnet18 keeps 90% of raw items/s.
NOOP_ADDED_P50_GOAL_MS = 1.0
RESNET18_RATIO_GOAL = 0.9

RAW_METHOD = (
    "in-process: a spawned child pinned (sched_setaffinity before importing onnxruntime) to the "
    "model's gpulet cores, session built by agent.worker.ModelRunner.load (the worker's options); "
    "c=1: back-to-back session.run; c=32: 32 threads calling session.run on the one session "
    "(ORT sessions are thread-safe), each back-to-back; latency per call, req/s = calls/elapsed. "
    "The gpulet system stays up and idle meanwhile (its workers are pinned to the same cores)."
)
HTTP_METHOD = (
    "through the router: closed-loop aiohttp client (one session, `c` back-to-back clients) in "
    "this process, unpinned, POST /v1/infer batch 1; noop as a nested list, resnet18 as base64; "
    f"slo_ms={BENCH_SLO_MS:.0f}; latency as the client sees it."
)


# ---------------------------------------------------------------- pure: stats and report


@dataclass(frozen=True)
class Stats:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int

    @classmethod
    def of(cls, latencies_ms: Sequence[float], elapsed_s: float) -> Stats:
        return cls(
            p50_ms=percentile(latencies_ms, 50),
            p99_ms=percentile(latencies_ms, 99),
            rps=len(latencies_ms) / elapsed_s,
            requests=len(latencies_ms),
        )


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def show(self, digits: int) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


# One repeat's results: (model, concurrency, path) -> Stats, path being "raw" or "http".
Key = tuple[str, int, str]


def headline(repeats: Sequence[Mapping[Key, Stats]]) -> dict[str, Spread]:
    """The issue's two figures, one value per repeat: added p50 for noop, resnet18 rps ratio."""
    added = [r[("noop", 1, "http")].p50_ms - r[("noop", 1, "raw")].p50_ms for r in repeats]
    figures = {"noop_added_p50_ms_c1": Spread.of(added)}
    for c in CONCURRENCIES:
        ratios = [r[("resnet18", c, "http")].rps / r[("resnet18", c, "raw")].rps for r in repeats]
        figures[f"resnet18_delivered_over_raw_c{c}"] = Spread.of(ratios)
    # 32 threads time-slicing one core run slower than back-to-back calls, so raw c=32 is a low
    # bar; the core's capacity is the raw c=1 rate, and this ratio compares with that too.
    capacity = [r[("resnet18", 32, "http")].rps / r[("resnet18", 1, "raw")].rps for r in repeats]
    figures["resnet18_delivered_c32_over_raw_c1"] = Spread.of(capacity)
    return figures


def render(repeats: Sequence[Mapping[Key, Stats]]) -> str:
    keys = list(repeats[0])
    lines = [
        f"{'model':9s} {'c':>3s} {'path':5s} {'n':>5s}  {'p50 ms':>22s}  {'p99 ms':>22s}  "
        f"{'req/s':>24s}",
    ]
    for key in keys:
        model, c, path = key
        p50 = Spread.of([r[key].p50_ms for r in repeats])
        p99 = Spread.of([r[key].p99_ms for r in repeats])
        rps = Spread.of([r[key].rps for r in repeats])
        lines.append(
            f"{model:9s} {c:3d} {path:5s} {repeats[0][key].requests:5d}  {p50.show(3):>22s}  "
            f"{p99.show(3):>22s}  {rps.show(1):>24s}"
        )
    figures = headline(repeats)
    added = figures["noop_added_p50_ms_c1"]
    verdict = "meets" if added.median <= NOOP_ADDED_P50_GOAL_MS else "misses"
    lines += [
        "",
        f"median [min-max] over {len(repeats)} repeats",
        f"noop added p50 at c=1 (http - raw): {added.show(3)} ms  "
        f"(goal <= {NOOP_ADDED_P50_GOAL_MS} ms: {verdict})",
    ]
    for c in CONCURRENCIES:
        ratio = figures[f"resnet18_delivered_over_raw_c{c}"]
        verdict = "meets" if ratio.median >= RESNET18_RATIO_GOAL else "misses"
        lines.append(
            f"resnet18 delivered / raw items/s at c={c}: {ratio.show(3)}  "
            f"(goal >= {RESNET18_RATIO_GOAL}: {verdict})"
        )
    capacity = figures["resnet18_delivered_c32_over_raw_c1"]
    lines.append(f"resnet18 delivered at c=32 / raw back-to-back (c=1) items/s: {capacity.show(3)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- inputs


def make_inputs(spec: ModelSpec) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(INPUT_SEED)
    return {
        t.name: rng.standard_normal((1, *t.item_shape)).astype(t.dtype)
        if t.dtype.startswith("float")
        else np.zeros((1, *t.item_shape), t.dtype)
        for t in spec.inputs
    }


def request_body(spec: ModelSpec, inputs: Mapping[str, np.ndarray[Any, Any]]) -> bytes:
    """noop as nested lists (the easy form); image models as base64, so JSON is not measured."""
    encoded: dict[str, Any] = {}
    for name, array in inputs.items():
        if spec.name == "noop":
            encoded[name] = array.tolist()
        else:
            encoded[name] = {
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "data": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes())
                .decode(),
            }  # fmt: skip
    return orjson.dumps({"model": spec.name, "inputs": encoded, "slo_ms": BENCH_SLO_MS})


# ---------------------------------------------------------------- (a) in-process, in a child


def raw_child(
    model: str, model_path: str, cores: tuple[int, ...], runs: Mapping[int, int]
) -> dict[int, tuple[tuple[float, ...], float]]:
    """Runs in a spawned child: pin, then load ORT as the worker does, then time session.run.

    Returns concurrency -> (latencies_ms, elapsed_s).
    """
    os.sched_setaffinity(0, set(cores))  # before onnxruntime is imported (ModelRunner.load)
    from agent.worker import ModelRunner, WorkerConfig

    config = WorkerConfig("raw", 0, "", cores, (model,), (model_path,), log_level="WARNING")
    runner = ModelRunner.load(config)
    session = runner.sessions[model]
    inputs = make_inputs(CATALOG[model])
    for _ in range(RAW_WARMUP_RUNS):
        session.run(None, inputs)
    return {c: timed_calls(session, inputs, c, total) for c, total in runs.items()}


def timed_calls(
    session: Any, inputs: Mapping[str, Any], concurrency: int, total: int
) -> tuple[tuple[float, ...], float]:
    """`total` session.run calls from `concurrency` threads, each back-to-back."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]

    def client(share: int) -> None:
        mine = []
        start.wait()
        for _ in range(share):
            began = time.perf_counter()
            session.run(None, inputs)
            mine.append((time.perf_counter() - began) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return tuple(latencies), time.perf_counter() - began


def measure_raw(
    model: str, model_path: Path, cores: tuple[int, ...], runs: Mapping[int, int]
) -> dict[int, Stats]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        measured = pool.submit(raw_child, model, str(model_path), cores, dict(runs)).result()
    return {c: Stats.of(lat, elapsed) for c, (lat, elapsed) in measured.items()}


# ---------------------------------------------------------------- (b) through the router


def measure_http(base: str, body: bytes, concurrency: int, requests: int) -> Stats:
    result: LoadResult = asyncio.run(
        closed_loop(
            f"{base}/v1/infer", body, concurrency=concurrency, requests=requests,
            warmup=max(20, 2 * concurrency),
        )
    )  # fmt: skip
    if result.non_ok:
        raise RuntimeError(f"non-200 answers at c={concurrency}: {result.non_ok}")
    return Stats.of(result.latencies_ms, result.elapsed_s)


# ---------------------------------------------------------------- the system under test


@contextmanager
def overhead_system(models: Sequence[str], log_path: Path) -> Iterator[str]:
    """`gpulet up` as a child; yields the router's base URL once /readyz says 200."""
    # The static rule: one gpu-let per model, batch 1, no batching window. This benchmark
    # measures the serving path, not the planner's duty-cycle batching (which, by design, lets a
    # lone request wait up to its gpu-let's duty cycle to gather a batch).
    args = ["--models", ",".join(models), "--no-build"]
    with gpulet_up(args, {"GPULET_SCHEDULER": "static"}, log_path) as (base, _):
        yield base


def gpulet_cores(base: str) -> dict[str, tuple[int, ...]]:
    """Model -> core set of the ready gpulet serving it, from /v1/cluster."""
    status, cluster = http_get(f"{base}/v1/cluster")
    if status != 200:
        raise RuntimeError(f"/v1/cluster answered {status}")
    cores: dict[str, tuple[int, ...]] = {}
    for agent in cluster["agents"]:
        for gpulet in agent["gpulets"]:
            if gpulet["state"] == "ready":
                for model in gpulet["models"]:
                    cores.setdefault(model, tuple(gpulet["cores"]))
    return cores


# ---------------------------------------------------------------- main


def build_models_if_possible(model_dir: Path, names: Sequence[str]) -> None:
    if importlib.util.find_spec("torch") is None:
        print("torch not importable: using the model files already built", file=sys.stderr)
        return
    from common.modelzoo.build import build_missing

    build_missing(model_dir, names, progress=True)


def run_once(
    base: str,
    model_dir: Path,
    cores: Mapping[str, tuple[int, ...]],
    counts: Mapping[str, dict[int, int]],
) -> dict[Key, Stats]:
    from common.modelzoo.cache import onnx_path

    stats: dict[Key, Stats] = {}
    for model in MODELS:
        spec = CATALOG[model]
        raw = measure_raw(model, onnx_path(model_dir, model), cores[model], counts[model])
        body = request_body(spec, make_inputs(spec))
        for c in CONCURRENCIES:
            stats[(model, c, "raw")] = raw[c]
            stats[(model, c, "http")] = measure_http(base, body, c, counts[model][c])
    return stats


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="whole (a)+(b) runs (default 3)")
    parser.add_argument(
        "--requests", type=int, default=2000,
        help="noop requests per concurrency and path (default 2000)",
    )  # fmt: skip
    parser.add_argument(
        "--resnet18-requests", type=int, default=150,
        help="resnet18 requests per path at c=1; c=32 gets twice as many (default 150)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwind through the finally blocks that stop the system

    signal.signal(signal.SIGTERM, on_term)
    settings = CommonSettings()
    build_models_if_possible(settings.model_dir, MODELS)
    counts = {
        "noop": {1: args.requests, 32: args.requests},
        "resnet18": {1: args.resnet18_requests, 32: 2 * args.resnet18_requests},
    }
    # Other work on the box skews every number here; the load average before we start shows it.
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    repeats: list[dict[Key, Stats]] = []
    cores: dict[str, tuple[int, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="gpulet-overhead-") as tmp:
        log_path = Path(tmp) / "up.log"
        try:
            with overhead_system(MODELS, log_path) as base:
                cores = gpulet_cores(base)
                missing = [m for m in MODELS if m not in cores]
                if missing:
                    raise RuntimeError(f"no ready gpulet for {missing} in /v1/cluster")
                print(f"system up at {base}; gpulet cores: {cores}", flush=True)
                for i in range(args.repeats):
                    repeats.append(run_once(base, settings.model_dir, cores, counts))
                    print(f"repeat {i + 1}/{args.repeats} done", flush=True)
        except BaseException:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
            print(f"--- gpulet up log (tail) ---\n{tail}", file=sys.stderr)
            raise
    elapsed_s = time.perf_counter() - started
    print()
    print(f"(a) raw = {RAW_METHOD}")
    print(f"(b) http = {HTTP_METHOD}")
    print(f"gpulet cores: {cores}")
    print()
    print(render(repeats))
    print(f"\nbenchmark time {elapsed_s:.0f}s (system start included); load average before {load}")
    if args.json is not None:
        report = {
            "methods": {"raw": RAW_METHOD, "http": HTTP_METHOD},
            "cores": {m: list(c) for m, c in cores.items()},
            "repeats": [
                [
                    {"model": m, "concurrency": c, "path": p, **asdict(s)}
                    for (m, c, p), s in r.items()
                ]
                for r in repeats
            ],
            "headline": {k: asdict(v) for k, v in headline(repeats).items()},
            "goals": {
                "noop_added_p50_ms_c1": f"<= {NOOP_ADDED_P50_GOAL_MS}",
                "resnet18_delivered_over_raw": f">= {RESNET18_RATIO_GOAL}",
            },
            "elapsed_s": elapsed_s,
        }
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the system was stopped", file=sys.stderr)
        sys.exit(130)
