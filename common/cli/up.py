"""`gpulet up`: the whole system on one machine: Redis, one agent (CPU or simulated) and the router.

Steps: build missing models -> find or start Redis -> start the agent and the router as child
processes (own sessions, so Ctrl-C reaches only us) -> wait for /readyz -> one warm-up request
per model -> print the URL and a curl example only if every model answered its warm-up 200
(else name each failing model and why, and exit 1; `--keep-going` serves the others) -> wait for
Ctrl-C/SIGTERM, restarting a child that dies, with back-off (supervise.py) -> stop router, agent
(which stops its workers) and the Redis we started, leaving nothing behind.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from agent.devices import allowed_cores, serving_split
from common import redis_server
from common.cli.readiness import RETRYABLE_STATUSES, load_failures, warm_up_problem
from common.cli.supervise import Supervisor, redis_children
from common.cli.up_repository import RepositoryStart, RepositoryUnusable, plan_start
from common.model_config import router_env
from common.models import CATALOG, ModelSpec, TensorSpec, spec_for
from common.procs import die_with_parent, free_port, stop_process
from common.settings import CommonSettings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
WARMUP_SLO_MS = 30_000.0  # warm-up absorbs first-call costs; it must not time out on them
# A warm-up refused for load (clients may already be sending) is asked again this long.
WARMUP_RETRY_S = 60.0
# Requests short enough to paste into a shell, in order of preference (real devices).
PASTEABLE_MODELS = ("noop", "bert_mini", "lenet")
PASTEABLE_VALUES = 256  # a repository model's example is pasteable up to this many input values


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    models: tuple[str, ...]
    agent_port: int
    build: bool
    simulated: str | None = None  # a profile name: simulated GPUs instead of CPU workers
    devices: int = 1
    time_scale: float = 1.0  # simulated GPUs run this many times slower than their profile
    slos_ms: Mapping[str, float] = field(default_factory=dict)  # -> GPULET_SLOS; empty: defaults
    agent_cores: str | None = None  # -> GPULET_AGENT_CORES; None: every allowed core
    rates_rps: Mapping[str, float] = field(default_factory=dict)  # -> GPULET_RATES; empty: none
    keep_going: bool = False  # serve the models that came up when others failed
    serving_cores: str = "auto"  # -> GPULET_SERVING_CORES: cores kept for router, agent, Redis
    # A model repository folder to serve (GPULET_MODEL_REPOSITORY); None: the built-in zoo.
    model_repository: Path | None = None


class Child:
    def __init__(
        self, name: str, args: list[str], env: dict[str, str], cores: Sequence[int] = ()
    ) -> None:
        self.name = name
        self.args, self.env, self.cores = args, env, tuple(cores)
        self.restart()

    def restart(self) -> None:
        cores = self.cores

        def prepare() -> None:
            die_with_parent()
            if cores:  # serving's own cores: the workers have the rest
                os.sched_setaffinity(0, cores)

        self.proc = subprocess.Popen(self.args, env=self.env, start_new_session=True,
                                     preexec_fn=prepare)  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.returncode

    def pid(self) -> int | None:
        return self.proc.pid

    def stop(self) -> None:
        code = stop_process(self.proc, STOP_TIMEOUT_S)
        logger.info("%s stopped code=%s", self.name, code)


def run_up(options: UpOptions, settings: CommonSettings) -> int:
    repository: RepositoryStart | None = None
    root = options.model_repository or settings.model_repository
    if root is not None:
        try:
            repository = plan_start(root, options.models, settings.max_model_bytes)
        except RepositoryUnusable as exc:
            print(f"gpulet up: {exc}", file=sys.stderr)
            return 2
        options = replace(options, models=repository.models, build=False,
                          slos_ms=repository.by_served_name(options.slos_ms),
                          rates_rps=repository.by_served_name(options.rates_rps))  # fmt: skip
    unknown = [m for m in options.models if m not in CATALOG and not options.simulated]
    if unknown and repository is None:
        print(f"unknown models {unknown}; choose from {sorted(CATALOG)}", file=sys.stderr)
        return 2
    if options.build:
        from common.modelzoo.build import build_missing

        build_missing(settings.model_dir, options.models, progress=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    own_cores, _ = serving_split(allowed_cores(options.agent_cores), options.serving_cores)
    redis = redis_server.resolve(settings.redis_url)
    logger.info("redis %s (%s)", redis.url, redis.source)
    if own_cores and redis.process is not None:
        os.sched_setaffinity(redis.process.pid, own_cores)
    children: list[Child] = []
    try:
        env = {
            **os.environ,
            "GPULET_REDIS_URL": redis.url,
            "GPULET_REDIS_PREFIX": settings.redis_prefix,
            "GPULET_MODEL_DIR": str(settings.model_dir),
            **router_env(options.models, options.slos_ms, options.rates_rps),
        }
        if options.simulated:
            env["GPULET_SIMULATED_PROFILE"] = options.simulated
            env["GPULET_SIMULATED_DEVICES"] = str(options.devices)
            env["GPULET_SIM_TIME_SCALE"] = f"{options.time_scale:g}"
        if options.agent_cores is not None:
            env["GPULET_AGENT_CORES"] = options.agent_cores
        env["GPULET_SERVING_CORES"] = options.serving_cores
        if own_cores:
            logger.info("serving (router, agent, Redis) on cores %s; workers on the rest",
                        list(own_cores))  # fmt: skip
        agent_env = dict(env)
        if repository is not None:
            env["GPULET_MODEL_REPOSITORY"] = agent_env["GPULET_MODEL_REPOSITORY"] = \
                str(repository.root)  # fmt: skip
            agent_env["GPULET_MODELS"] = ",".join(repository.served_names)
        gpulet = [sys.executable, "-m", "common.cli.main"]
        # A fixed port, so a restarted agent registers under the same id (hostname-port).
        agent_env["GPULET_AGENT_PORT"] = str(options.agent_port or free_port())
        children.append(Child("agent", [*gpulet, "agent"], agent_env))
        children.append(
            Child("router", [*gpulet, "router"],
                  {**env, "GPULET_ROUTER_HOST": options.host,
                   "GPULET_ROUTER_PORT": str(options.port)}, own_cores)
        )  # fmt: skip
        base = f"http://{_url_host(options.host)}:{options.port}"
        failed = _wait_ready(base, children, stopping, options.keep_going)
        if failed is None:
            return 1
        simulated = options.simulated is not None
        specs = {s.name: s for s in repository.specs} if repository is not None else \
            {name: spec_for(name, simulated=simulated) for name in options.models}  # fmt: skip
        for name, spec in specs.items():
            if name not in failed:
                problem = _warm_up(base, spec, stopping)
                if problem is not None:
                    failed[name] = f"warm-up answered {problem}"
        for name, why in failed.items():
            print(f"gpulet: model {name} failed: {why}", file=sys.stderr, flush=True)
        serving = tuple(m for m in specs if m not in failed)
        if failed and (not options.keep_going or not serving):
            print(f"gpulet is not ready: {len(failed)} of {len(specs)} model(s) failed "
                  "(--keep-going serves the others); stopping", file=sys.stderr)  # fmt: skip
            return 1
        if failed:
            print(f"gpulet serves {', '.join(serving)} only (--keep-going): "
                  f"{', '.join(failed)} failed", file=sys.stderr)  # fmt: skip
        print_banner(base, serving, simulated=simulated,
                     specs=[specs[m] for m in serving] if repository is not None else None)
        supervisor = Supervisor([*children, *redis_children(redis, own_cores)])  # supervise.py
        while not stopping.is_set():
            supervisor.check()
            stopping.wait(POLL_INTERVAL_S)
        return 0
    finally:
        for child in reversed(children):  # router first: no new work reaches the agent
            child.stop()
        redis.stop()
        print("gpulet stopped", file=sys.stderr)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _wait_ready(
    base: str, children: Sequence[Child], stopping: threading.Event, keep_going: bool
) -> dict[str, str] | None:
    """Wait until every model is ready, or has failed to load (its gpu-lets keep failing);
    the failed ones with why. None: give up (a child died, time ran out, Ctrl-C, or a model
    failed and `keep_going` is off)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline and not stopping.is_set():
        dead = [c.name for c in children if not c.alive()]
        if dead:
            logger.error("%s exited during start-up; see the log above", ", ".join(dead))
            return None
        try:
            status, body = _http("GET", f"{base}/readyz")
            if status == 200:
                return {}
            error = body.get("error", {})
            waiting = [str(m) for m in error.get("not_ready", [])]
            failed = load_failures(_http("GET", f"{base}/v1/cluster")[1], waiting)
            if failed and (not keep_going or set(failed) == set(waiting)):
                for name, why in failed.items():
                    print(f"gpulet: model {name} failed to load: {why}", file=sys.stderr)
                if not keep_going:
                    print("gpulet is not ready (--keep-going serves the other models); "
                          "stopping", file=sys.stderr)  # fmt: skip
                    return None
                return failed
            message = error.get("message", "")
            if message != last:
                logger.info("waiting: %s", message)
                last = message
        except OSError:
            pass  # router not listening yet
        stopping.wait(POLL_INTERVAL_S)
    if not stopping.is_set():
        logger.error("not ready after %.0fs: %s", READY_TIMEOUT_S, last)
    return None


def one_item_shape(tensor: TensorSpec) -> list[int]:
    """The shape of one item as a request sends it: a batch of one, or (a model without a batch
    axis) the tensor's whole shape."""
    return [1, *tensor.item_shape] if tensor.batched else list(tensor.item_shape)


def _warm_up(base: str, spec: ModelSpec, stopping: threading.Event) -> str | None:
    """One request per model, asked again while refused for load; why it failed, or None."""
    inputs = {
        t.name: {
            "shape": one_item_shape(t),
            "dtype": t.dtype,
            "data": base64.b64encode(np.zeros(one_item_shape(t), t.dtype).tobytes()).decode(),
        }
        for t in spec.inputs
    }
    body = {"model": spec.name, "inputs": inputs, "slo_ms": WARMUP_SLO_MS}
    deadline = time.monotonic() + WARMUP_RETRY_S
    while True:
        status, answer = _http("POST", f"{base}/v1/infer", body)
        if status == 200:
            logger.info("warm-up model=%s latency_ms=%s", spec.name, answer.get("latency_ms"))
            return None
        # Clients may already be sending (the router is ready): a refusal for load is not
        # the model's failure.
        if status not in RETRYABLE_STATUSES or time.monotonic() > deadline or stopping.is_set():
            return warm_up_problem(status, answer)
        logger.info("warm-up of %s answered %d; asking again", spec.name, status)
        stopping.wait(POLL_INTERVAL_S)


def _http(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def example_request(
    models: Sequence[str], *, simulated: bool = False, specs: Sequence[ModelSpec] | None = None
) -> dict[str, Any]:
    """A request small enough to paste: on simulated GPUs the first model's token, else the
    first of PASTEABLE_MODELS that is served (of a repository's `specs`: the first whose inputs
    are small); else the base64 form with a placeholder."""
    if specs is not None:
        small_specs = [s for s in specs if sum(math.prod(one_item_shape(t)) for t in s.inputs)
                       <= PASTEABLE_VALUES]  # fmt: skip
        chosen = small_specs[0] if small_specs else specs[0]
    else:
        small = list(models[:1]) if simulated else [n for n in PASTEABLE_MODELS if n in models]
        chosen = spec_for(small[0] if small else models[0], simulated=simulated)
        small_specs = [chosen] if small else []
    spec = chosen
    if small_specs:
        return {
            "model": spec.name,
            "inputs": {t.name: np.ones(one_item_shape(t), t.dtype) for t in spec.inputs},
        }
    return {
        "model": spec.name,
        "inputs": {
            t.name: {
                "shape": one_item_shape(t),
                "dtype": t.dtype,
                "data": "<base64 of the raw little-endian bytes>",
            }
            for t in spec.inputs
        },
    }


def print_banner(
    base: str, models: Sequence[str], *, simulated: bool = False,
    specs: Sequence[ModelSpec] | None = None,
) -> None:
    example = example_request(models, simulated=simulated, specs=specs)
    body = orjson.dumps(example, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    curl = f"curl -s {base}/v1/infer -H 'content-type: application/json' -d {shlex.quote(body)}"
    print(
        f"\ngpulet is ready at {base}  (models: {', '.join(models)})\n"
        f"  models:  curl -s {base}/v1/models\n"
        f"  cluster: curl -s {base}/v1/cluster\n"
        f"  try:     {curl}\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )
