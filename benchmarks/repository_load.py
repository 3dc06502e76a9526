"""Model repository figures: how long a repository model takes from `load` to ready, and what 20
small repository models cost the router in memory.

    python benchmarks/repository_load.py --repeats 3 \
        --json benchmarks/results/repository_load.json

1. load -> ready of a ~45 MB model (the zoo's BERT-mini ONNX file, 44.7 MB, put in a repository
   folder as a user's model), measured from the POST to its 200:
     cold          a fresh system and profile cache: the agent checks the file in ONNX Runtime
                   and measures its profile rows (core sets 1..N, batches GPULET_PROFILE_BATCHES),
                   then the router plans and a worker loads it;
     warm          unload, then load again: the rows and the check are reused;
     cold, fetched the agent does not see the folder: it also fetches the file from the router
                   by sha256 and verifies it (router and agent started as separate processes).
2. Router memory with 20 small repository models loaded: the router's RSS once ready with one
   model, and after loading 20 more (one request sent to each), under the static rule (on a
   2-core machine the planner places at most two models) with no profiling.
Each figure is the median [min-max] over the repeats; every run is a fresh system.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from onnx import TensorProto, helper, numpy_helper

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import gpulet_up, router_pid

from common import redis_server
from common.modelzoo.build import build_missing
from common.modelzoo.cache import onnx_path
from common.procs import die_with_parent, free_port, stop_process
from common.settings import default_model_dir

BIG = "textcls"  # the ~45 MB model
STARTER = "starter"  # served from the start, so that the system is ready before any load
SMALL_COUNT = 20
LOAD_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 300.0


def post(url: str, body: Any = None, timeout_s: float = LOAD_TIMEOUT_S) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=orjson.dumps(body or {}), method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def timed_load(base: str, name: str) -> float:
    started = time.perf_counter()
    status, body = post(f"{base}/v2/repository/models/{name}/load")
    if status != 200:
        raise RuntimeError(f"load {name}: {status} {body}")
    return time.perf_counter() - started


def small_model(path: Path, width: int) -> None:
    """x float32 [B, width] -> y = x W: a few kB, a different file for every width."""
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32) * (width % 7 + 1), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def make_repository(root: Path, work: Path) -> int:
    zoo = default_model_dir()
    if not onnx_path(zoo, "bert_mini").exists():
        zoo = work / "zoo"
        build_missing(zoo, ["bert_mini"], progress=False)
    big = root / BIG / "1" / "model.onnx"
    big.parent.mkdir(parents=True)
    shutil.copy(onnx_path(zoo, "bert_mini"), big)
    (root / BIG / "gpulet.toml").write_text('slo_ms = 2000\ndescription = "a 45 MB model"\n')
    small_model(root / STARTER / "1" / "model.onnx", 8)
    for i in range(SMALL_COUNT):
        small_model(root / f"small{i:02d}" / "1" / "model.onnx", 9 + i)
    print(f"repository {root}: {BIG} {big.stat().st_size / 1e6:.1f} MB, {SMALL_COUNT} small "
          f"models of {(root / 'small00' / '1' / 'model.onnx').stat().st_size} bytes and up")
    return big.stat().st_size


def big_model_run(root: Path, work: Path, run: int) -> tuple[float, float]:
    """(cold s, warm s) on a fresh system whose agent sees the folder."""
    env = {"GPULET_MODEL_DIR": str(work / f"cache-{run}" / "models")}
    log = work / f"up-big-{run}.log"
    with gpulet_up(["--model-repository", str(root), "--models", STARTER], env, log) as (base, _):
        cold = timed_load(base, BIG)
        status, body = post(f"{base}/v2/repository/models/{BIG}/unload")
        if status != 200:
            raise RuntimeError(f"unload: {status} {body}")
        warm = timed_load(base, BIG)
    return cold, warm


@contextmanager
def separate_processes(root: Path, work: Path, run: int) -> Iterator[str]:
    """Redis, a router that reads the folder and an agent that does not see it."""
    redis = redis_server.resolve(None)
    port = free_port()
    base_env = {**os.environ, "GPULET_REDIS_URL": redis.url, "GPULET_LOG_LEVEL": "WARNING",
                "GPULET_MODEL_DIR": str(work / f"fetch-{run}" / "models")}  # fmt: skip
    base_env.pop("GPULET_MODEL_REPOSITORY", None)
    cli = [sys.executable, "-m", "common.cli.main"]
    children: list[subprocess.Popen[bytes]] = []
    try:
        with (work / f"fetch-{run}.log").open("ab") as log:
            for args, extra in (
                ([*cli, "agent"], {"GPULET_MODELS": STARTER, "GPULET_AGENT_PORT": "0"}),
                ([*cli, "router"], {"GPULET_MODELS": STARTER, "GPULET_ROUTER_PORT": str(port),
                                    "GPULET_MODEL_REPOSITORY": str(root)}),
            ):  # fmt: skip
                children.append(subprocess.Popen(
                    args, env={**base_env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=die_with_parent))  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("router and agent not ready")
            time.sleep(0.2)  # polls readiness with a deadline; noqa: sleep-ok
        yield base
    finally:
        for child in reversed(children):
            stop_process(child, 10.0)
        redis.stop()


def fetched_run(root: Path, work: Path, run: int) -> float:
    with separate_processes(root, work, run) as base:
        return timed_load(base, BIG)


def memory_run(root: Path, work: Path, run: int) -> tuple[float, float]:
    """Router RSS in MiB: ready with one model, and with SMALL_COUNT more loaded and used."""
    env = {"GPULET_MODEL_DIR": str(work / f"mem-{run}" / "models"), "GPULET_SCHEDULER": "static",
           "GPULET_PROFILE_ON_START": "false"}  # fmt: skip
    log = work / f"up-mem-{run}.log"
    with gpulet_up(["--model-repository", str(root), "--models", STARTER], env, log) as (base,
                                                                                         up):
        router = psutil.Process(router_pid(up))
        before = router.memory_info().rss / 2**20
        for i in range(SMALL_COUNT):
            name = f"small{i:02d}"
            timed_load(base, name)
            status, body = post(f"{base}/v1/infer", {"model": name,
                                                     "inputs": {"x": [[1.0] * (9 + i)]}})
            if status != 200:
                raise RuntimeError(f"infer {name}: {status} {body}")
        after = router.memory_info().rss / 2**20
    return before, after


def spread(values: Sequence[float], unit: str, digits: int = 1) -> str:
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-"
            f"{max(values):.{digits}f}] {unit}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpulet-repo-bench-") as tmp:
        work = Path(tmp)
        root = work / "repository"
        big_bytes = make_repository(root, work)
        cold, warm, fetched, before, after = [], [], [], [], []
        for run in range(args.repeats):
            c, w = big_model_run(root, work, run)
            f = fetched_run(root, work, run)
            b, a = memory_run(root, work, run)
            cold.append(c)
            warm.append(w)
            fetched.append(f)
            before.append(b)
            after.append(a)
            print(f"run {run + 1}: load->ready cold {c:.2f} s, warm {w:.2f} s, cold fetched "
                  f"{f:.2f} s; router RSS {b:.1f} -> {a:.1f} MiB with {SMALL_COUNT} more models",
                  flush=True)  # fmt: skip
    per_model = [(a - b) / SMALL_COUNT * 1024 for a, b in zip(after, before, strict=True)]
    print(f"\nload -> ready, {BIG} ({big_bytes / 1e6:.1f} MB), {args.repeats} runs:")
    print(f"  cold (check + measure + plan + worker):  {spread(cold, 's', 2)}")
    print(f"  warm (rows and check reused):            {spread(warm, 's', 2)}")
    print(f"  cold, file fetched from the router:      {spread(fetched, 's', 2)}")
    print(f"router RSS: 1 model {spread(before, 'MiB')}; {SMALL_COUNT + 1} models "
          f"{spread(after, 'MiB')}; {spread(per_model, 'KiB', 0)} per model")
    if args.json is not None:
        args.json.write_text(orjson.dumps({
            "model_bytes": big_bytes, "repeats": args.repeats, "cold_s": cold, "warm_s": warm,
            "cold_fetched_s": fetched, "router_rss_mib_one_model": before,
            f"router_rss_mib_{SMALL_COUNT + 1}_models": after, "rss_kib_per_model": per_model,
        }, option=orjson.OPT_INDENT_2).decode() + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
