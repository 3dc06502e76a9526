"""Timing error of the simulated device kind: achieved vs intended batch latency under full load.

In-process (default): a SimulatedExecutor with 64 GPUs of `a100-class`, two gpulets on each
(50/50, 80/20 or 60/40), every gpulet kept busy by 2-4 back-to-back callers (so 1-3 batches wait
behind the running one), batches of 1-32. Every batch's timing comes from the executor itself.
    python benchmarks/sim_timing.py [--seconds 25] [--timer timerfd|loop] [--loop uvloop|asyncio]
                                    [--interference fitted|none]
Through HTTP (`--http`): a real `gpulet agent --simulated` process, one 100 % gpulet per GPU
(no neighbour, so the intended latency is the profile's and can be computed here), driven with
the router's AgentClient; achieved = the reply's compute_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import subprocess
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil
import uvloop

from agent.devices import discover_simulated
from agent.simulated import BatchTiming, SimulatedExecutor, TimerKind
from common import frames, redis_server
from common.errors import GpuletError
from common.interference import NoInterference
from common.placement import GpuletModel, GpuletSpec
from common.procs import die_with_parent, free_port, stop_process
from common.profiles import DeviceProfile, find_profile
from common.settings import AgentSettings
from router.dispatch.agent_client import AgentClient

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet50", "vgg16", "densenet121", "mobilenet_v2", "inception_v3")
SPLITS_PCT = ((50.0, 50.0), (80.0, 20.0), (60.0, 40.0))
MAX_BATCH = 32
CALLERS_PER_GPULET = (2, 4)  # drawn per gpulet: 1-3 batches queued behind the running one
DEADLINE_S = 30.0  # generous: this measures timing, not admission
WARMUP_S = 1.0  # batches completed before this are left out of the statistics
AGENT_READY_TIMEOUT_S = 30.0


class Recorder:
    """Per-batch timings in flat float columns: a list of 200 k objects would itself trigger
    the multi-10-ms gen-2 garbage collections that this benchmark must not cause."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.gpulet = array("l")
        self.columns = {k: array("d") for k in ("submitted", "started", "intended", "completed")}

    def add(self, gpulet_id: str, submitted_s: float, started_s: float, intended_ms: float,
            completed_s: float) -> None:  # fmt: skip
        self.gpulet.append(self.ids.setdefault(gpulet_id, len(self.ids)))
        for key, value in zip(self.columns, (submitted_s, started_s, intended_ms, completed_s),
                              strict=True):  # fmt: skip
            self.columns[key].append(value)

    def on_batch(self, t: BatchTiming) -> None:
        self.add(t.gpulet_id, t.submitted_s, t.started_s, t.intended_ms, t.completed_s)

    def column(self, key: str) -> npt.NDArray[np.float64]:
        return np.frombuffer(self.columns[key], dtype=np.float64)


class Gen2Pauses:
    """Full (generation-2) garbage collections while attached: they stall the event loop."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses_ms.append((time.monotonic() - self._started) * 1000)

    def __str__(self) -> str:
        longest = max(self.pauses_ms, default=0.0)
        return f"gen-2 GC: {len(self.pauses_ms)} pauses, longest {longest:.1f}ms"


def layout(devices: int, rng: random.Random, *, split: bool) -> list[GpuletSpec]:
    """Two gpulets per GPU (one of SPLITS_PCT), each serving one or two profile models."""
    specs = []
    for d in range(devices):
        sizes = SPLITS_PCT[d % len(SPLITS_PCT)] if split else (100.0,)
        for k, size in enumerate(sizes):
            models = rng.sample(MODELS, rng.choice((1, 2)))
            specs.append(
                GpuletSpec(f"sim{d}-g{k}", "bench", f"sim{d}", (),
                           tuple(GpuletModel(m) for m in models), size=size)
            )  # fmt: skip
    return specs


async def drive(
    specs: Sequence[GpuletSpec],
    profile: DeviceProfile,
    call: Callable[[GpuletSpec, str, dict[str, frames.Array]], Awaitable[frames.Frame]],
    seconds: float,
    rng: random.Random,
) -> Counter[str]:
    """2-4 callers per gpulet, each sending its next batch as soon as the last one returns."""
    inputs = {b: {"input": np.zeros((b, 1), np.float32)} for b in range(1, MAX_BATCH + 1)}
    errors: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def caller(spec: GpuletSpec, seed: int) -> None:
        own = random.Random(seed)
        while time.monotonic() < stop_at:
            model = own.choice(spec.model_names)
            batch = own.randint(1, min(MAX_BATCH, profile.max_batch(model, spec.size)))
            try:
                await call(spec, model, inputs[batch])
            except GpuletError as exc:
                errors[exc.code] += 1

    async with asyncio.TaskGroup() as group:
        for spec in specs:
            for _ in range(rng.randint(*CALLERS_PER_GPULET)):
                group.create_task(caller(spec, rng.getrandbits(32)))
    return errors


def ideal_lateness_ms(rec: Recorder) -> npt.NDArray[np.float64]:
    """Completion minus the end an exact FIFO server would give each batch, per gpulet:
    ideal_end_k = max(submitted_k, ideal_end_{k-1}) + intended_k. Shows drift that builds up
    along a queue, which the per-batch error (completion - start - intended) cannot."""
    submitted, started = rec.column("submitted"), rec.column("started")
    intended_s, completed = rec.column("intended") / 1000, rec.column("completed")
    late = np.empty_like(completed)
    gpulets = np.frombuffer(rec.gpulet, dtype=np.int64)
    for g in range(len(rec.ids)):
        ideal_end = 0.0
        rows = np.flatnonzero(gpulets == g)
        for i in rows[np.argsort(started[rows], kind="stable")]:
            ideal_end = max(submitted[i], ideal_end) + intended_s[i]
            late[i] = completed[i] - ideal_end
    return late * 1000


def dist(values: npt.NDArray[np.float64], unit: str, scale: float = 1.0) -> str:
    # nearest-rank percentiles, as loadgen reports them
    p50, p99 = np.percentile(values * scale, (50, 99), method="inverted_cdf")
    return f"p50 {p50:+.3f}{unit}  p99 {p99:+.3f}{unit}  max {values.max() * scale:+.3f}{unit}"


def report(rec: Recorder, wall_s: float, cpu_s: float, errors: Counter[str], since_s: float,
           cpu_label: str, *, schedule: bool = True) -> None:  # fmt: skip
    kept = rec.column("completed") >= since_s
    intended = rec.column("intended")[kept]
    achieved = (rec.column("completed") - rec.column("started"))[kept] * 1000
    error_ms = achieved - intended
    window_s = wall_s - WARMUP_S
    busy = intended.sum() / 1000 / (len(rec.ids) * window_s)
    print(f"batches {kept.sum()} ({kept.sum() / window_s:.0f}/s) on {len(rec.ids)} gpulets, "
          f"mean gpulet busy {busy:.1%}; errors {dict(errors) or 'none'}")  # fmt: skip
    print(f"intended:                 {dist(intended, 'ms')}")
    print(f"achieved - intended:      {dist(error_ms, 'ms')}")
    print(f"(achieved - intended)/intended: {dist(error_ms / intended, '%', 100)}")
    if schedule:
        print(f"lateness vs ideal FIFO:   {dist(ideal_lateness_ms(rec)[kept], 'ms')}")
    print(f"{cpu_label} CPU {cpu_s / wall_s:.1%} of one core ({cpu_s:.1f}s over {wall_s:.1f}s)")


async def in_process(args: argparse.Namespace) -> None:
    profile = find_profile(args.profile)
    rng = random.Random(args.seed)
    specs = layout(args.devices, rng, split=True)
    rec = Recorder()
    devices = discover_simulated(profile, args.devices)
    timer: TimerKind = args.timer
    # "none" isolates the executor's own timing from the fitted model's cost and memory.
    interference = NoInterference() if args.interference == "none" else None
    executor = SimulatedExecutor(
        AgentSettings(), profile, devices, interference=interference, timer=timer,
        on_batch=rec.on_batch,
    )  # fmt: skip
    await executor.start()
    await executor.apply(specs)
    print(f"{len(specs)} gpulets on {args.devices} simulated {profile.name} GPUs, timer "
          f"{args.timer}, loop {args.loop}, interference "
          f"{type(executor.interference).__name__}")  # fmt: skip

    async def call(spec: GpuletSpec, model: str, tensors: dict[str, frames.Array]) -> frames.Frame:
        return await executor.run(spec.gpulet_id, model, tensors, time.monotonic() + DEADLINE_S)

    gc_pauses = Gen2Pauses()
    gc.callbacks.append(gc_pauses)
    try:
        wall0, cpu0 = time.monotonic(), time.process_time()
        errors = await drive(specs, profile, call, args.seconds, rng)
        wall_s, cpu_s = time.monotonic() - wall0, time.process_time() - cpu0
    finally:
        gc.callbacks.remove(gc_pauses)
        await executor.close()
    report(rec, wall_s, cpu_s, errors, wall0 + WARMUP_S, "event loop (process)")
    print(gc_pauses)


def start_agent(
    args: argparse.Namespace, redis_url: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`gpulet agent --simulated PROFILE --devices N` on a free port, under its own key prefix."""
    port = free_port()
    agent_id = f"sim-bench-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "GPULET_REDIS_URL": redis_url, "GPULET_AGENT_PORT": str(port),
           "GPULET_REDIS_PREFIX": f"{agent_id}:", "GPULET_AGENT_ID": agent_id,
           "GPULET_LOG_LEVEL": "WARNING"}  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "agent", "--simulated", args.profile,
         "--devices", str(args.devices)],
        env=env, cwd=REPO_ROOT, preexec_fn=die_with_parent,
    )  # fmt: skip
    return agent, agent_id, f"http://127.0.0.1:{port}"


async def over_http(args: argparse.Namespace, agent: subprocess.Popen[bytes], agent_id: str,
                    url: str) -> None:  # fmt: skip
    profile = find_profile(args.profile)
    rng = random.Random(args.seed)
    specs = [_on(agent_id, s) for s in layout(args.devices, rng, split=False)]
    rec, client = Recorder(), AgentClient(connections=1024)
    client_ms = array("d")
    try:
        deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
        while True:
            try:
                await client.set_gpulets(url, 1, specs)
                break
            except GpuletError:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise
                await asyncio.sleep(0.1)  # polls the agent's start-up with a deadline
        print(f"{len(specs)} gpulets (100 %) on {args.devices} simulated {profile.name} GPUs "
              f"in agent pid {agent.pid}, over HTTP")  # fmt: skip

        async def call(
            spec: GpuletSpec, model: str, tensors: dict[str, frames.Array]
        ) -> frames.Frame:
            sent = time.monotonic()
            reply = await client.run(url, spec.gpulet_id, model, tensors, DEADLINE_S, "bench")
            done = time.monotonic()
            batch = int(next(iter(tensors.values())).shape[0])
            intended_ms = profile.latency_ms(model, batch, spec.size)  # no neighbour: slowdown 1
            achieved_s = float(reply.header["compute_ms"]) / 1000
            rec.add(spec.gpulet_id, sent, done - achieved_s, intended_ms, done)
            client_ms.append((done - sent) * 1000 - intended_ms)
            return reply

        proc = psutil.Process(agent.pid)
        wall0, cpu0 = time.monotonic(), sum(proc.cpu_times()[:2])
        errors = await drive(specs, profile, call, args.seconds, rng)
        wall_s, cpu_s = time.monotonic() - wall0, sum(proc.cpu_times()[:2]) - cpu0
    finally:
        await client.close()
    # The start is inferred (reply time - compute_ms): only achieved - intended is meaningful.
    report(rec, wall_s, cpu_s, errors, wall0 + WARMUP_S, "agent process", schedule=False)
    print(f"client latency - intended: {dist(np.frombuffer(client_ms), 'ms')}")


def _on(agent_id: str, spec: GpuletSpec) -> GpuletSpec:
    return GpuletSpec(spec.gpulet_id, agent_id, spec.device_id, (), spec.models, size=spec.size)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--profile", default="a100-class")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--timer", choices=("timerfd", "loop"), default="timerfd")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the agent runs uvloop")  # fmt: skip
    parser.add_argument("--interference", choices=("fitted", "none"), default="fitted",
                        help="fitted: the profile's shipped model (in-process runs)")  # fmt: skip
    parser.add_argument("--http", action="store_true", help="through a real agent process")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run = uvloop.run if args.loop == "uvloop" else asyncio.run
    if not args.http:
        run(in_process(args))
        return
    redis = redis_server.resolve(os.environ.get("GPULET_REDIS_URL"))
    agent, agent_id, url = start_agent(args, redis.url)
    try:
        run(over_http(args, agent, agent_id, url))
    finally:
        stop_process(agent, timeout_s=10.0)
        redis.stop()


if __name__ == "__main__":
    main()
