"""Keeping up through restarts, and more than one router: recovery times, the planner lease's
takeover, and goodput with 1 vs 2 routers.

    python benchmarks/resilience.py recovery [--repeats 3] [--json PATH]
    python benchmarks/resilience.py goodput [--time-scale 16] [--duration 30] [--repeats 1]
    python benchmarks/resilience.py all ...

recovery: each kill on a fresh `gpulet up --simulated a100-class --devices 2 --models
resnet50,vgg16 --time-scale 10` (a fresh system, so the supervisor's back-off starts at its
first step), with light load running (4 closed-loop clients, retrying refused connections):
  router       SIGKILL the router: seconds until a new router answers /readyz 200;
  redis        SIGKILL the embedded Redis: seconds until /v1/cluster answers again with the
               agent and the placement (written back at its version);
  lease        a second router started beside `gpulet up`'s; SIGKILL the lease holder: seconds
               until the survivor's /v1/cluster says it plans (`routers.leading`).
Prints each kill's times and their median, and the requests the load lost (none expected).

goodput: a100-scen3 on 4 simulated GPUs at time scale K, planned (GPULET_RATES) for the
predicted peak r* and driven open-loop (Poisson) at the measured peak r, both from
benchmarks/results/e2e_peak.json (gpulet+int), for --duration s, once through one router and
once through two (`gpulet up`'s and a second one beside it, the arrivals split between them
alternately, as a load balancer would): goodput (answered 200 within SLO per second, after a
5 s warm-up) and its ratio 2 routers / 1 router.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

# Run as a script: this folder is on sys.path, so the sibling module imports by name.
from system import REPO_ROOT, gpulet_up, http_get

from common.procs import die_with_parent, free_port, stop_process
from common.scenarios import PACKAGED_SCENARIOS, load_scenario
from loadgen.arrivals import schedule
from loadgen.bodies import request_bodies
from loadgen.report import build_report
from loadgen.runner import RunConfig, RunResult, run_open_loop

SCENARIO = PACKAGED_SCENARIOS / "a100-scen3.toml"
PEAKS = REPO_ROOT / "benchmarks" / "results" / "e2e_peak.json"
SIM_UP = ["--simulated", "a100-class", "--devices", "2", "--models", "resnet50,vgg16",
          "--time-scale", "10"]  # fmt: skip
TOKEN = orjson.dumps({"model": "resnet50", "inputs": {"input": [[0.0]]}})
LIMIT_S = 30.0  # a recovery slower than this is a failure
POLL_S = 0.02
WARMUP_S = 5.0


def router_pid(up_pid: int) -> int | None:
    """The live router child of a `gpulet up` (None while it is being restarted)."""
    for child in psutil.Process(up_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "router" in child.cmdline():
                return int(child.pid)
        except psutil.Error:
            continue
    return None


def now() -> float:
    return time.monotonic()


def wait_for(probe: Callable[[], bool], what: str) -> float:
    """Seconds until `probe()` holds (polled every POLL_S), at most LIMIT_S."""
    started = now()
    while not probe():
        if now() - started > LIMIT_S:
            raise RuntimeError(f"no {what} after {LIMIT_S:.0f}s")
        time.sleep(POLL_S)
    return now() - started


def get(url: str) -> tuple[int, Any]:
    try:
        return http_get(url)
    except OSError:
        return 0, None


class Clients:
    """Closed-loop clients on threads, each request retried on a refused or dropped
    connection (over the routers in turn) until answered: lost = never answered in LIMIT_S."""

    def __init__(self, urls: Callable[[], Sequence[str]], count: int = 4) -> None:
        import urllib.request

        self.urls, self.answers, self.lost, self.retried = urls, 0, 0, 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._request = urllib.request
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LIMIT_S + 5)

    def _run(self) -> None:
        import http.client
        import urllib.error

        turn = 0
        while not self._stop.is_set():
            started = now()
            while True:
                urls = list(self.urls())
                url, turn = urls[turn % len(urls)] + "/v1/infer", turn + 1
                request = self._request.Request(
                    url, data=TOKEN, method="POST", headers={"content-type": "application/json"}
                )
                try:
                    with self._request.urlopen(request, timeout=LIMIT_S) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                    self.retried += 1
                    if now() - started > LIMIT_S:
                        self.lost += 1
                        break
                    time.sleep(POLL_S)
                    continue
                self.answers += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                break


@contextmanager
def second_router(up_pid: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A router beside `gpulet up`'s, with its settings (its environment) on its own port."""
    pid = router_pid(up_pid)
    assert pid is not None
    env = dict(psutil.Process(pid).environ())
    port = free_port()
    env["GPULET_ROUTER_PORT"] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "common.cli.main", "router"], env=env,
                            cwd=REPO_ROOT, start_new_session=True, preexec_fn=die_with_parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, "second router ready")
        yield base, proc
    finally:
        stop_process(proc, 10.0)


def cluster(base: str) -> dict[str, Any] | None:
    status, body = get(base + "/v1/cluster")
    return body if status == 200 else None


def kill_router(base: str, up_pid: int, logs: Path) -> float:
    old = router_pid(up_pid)
    with Clients(lambda: [base]) as clients:
        wait_for(lambda: clients.answers >= 20, "load")
        psutil.Process(old or 0).kill()
        killed = now()
        wait_for(lambda: router_pid(up_pid) not in (None, old) and get(base + "/readyz")[0] == 200,
                 "router back")  # fmt: skip
        seconds = now() - killed
    report(clients)
    return seconds


def kill_redis(base: str, up_pid: int, logs: Path) -> float:
    version = (cluster(base) or {})["placement"]["version"]
    redis = next(p for p in psutil.Process(up_pid).children() if "server" in p.name())
    with Clients(lambda: [base]) as clients:
        wait_for(lambda: clients.answers >= 20, "load")
        redis.kill()
        killed = now()

        def back() -> bool:
            body = cluster(base)
            return bool(body and body["agents"] and body["placement"]
                        and body["placement"]["version"] == version)  # fmt: skip

        wait_for(back, "agents and placement back in Redis")
        seconds = now() - killed
    report(clients)
    return seconds


def kill_lease_holder(base: str, up_pid: int, logs: Path) -> float:
    with second_router(up_pid) as (other, proc):
        urls = {"up": base, "second": other}
        wait_for(lambda: all((cluster(u) or {}).get("routers", {}).get("count") == 2
                             for u in urls.values()), "both routers registered")  # fmt: skip
        with Clients(lambda: list(urls.values())) as clients:
            wait_for(lambda: clients.answers >= 20, "load")
            roles = {n: (cluster(u) or {})["routers"] for n, u in urls.items()}
            leading = next(n for n, r in roles.items() if r["leading"])
            if leading == "up":  # its supervisor restarts it: a new member, who may win too
                psutil.Process(router_pid(up_pid) or 0).kill()
            else:
                proc.kill()
            killed = now()

            def taken_over() -> bool:
                found = [(cluster(u) or {}).get("routers", {}) for u in urls.values()]
                return any(r.get("leading") and r["self"] != roles[leading]["self"]
                           for r in found)  # fmt: skip

            wait_for(taken_over, "another router to lead")
            seconds = now() - killed
        report(clients)
    return seconds


def report(clients: Clients) -> None:
    print(f"    load: {clients.answers} answered {clients.statuses}, {clients.retried} "
          f"connections retried, {clients.lost} lost", flush=True)  # fmt: skip


KILLS = {"router": kill_router, "redis": kill_redis, "lease": kill_lease_holder}


def recovery(repeats: int, logs: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, kill in KILLS.items():
        times = []
        for repeat in range(repeats):
            with gpulet_up(SIM_UP, {"GPULET_LOG_LEVEL": "INFO"},
                           logs / f"{name}-{repeat}.log") as (base, up_pid):  # fmt: skip
                seconds = kill(base, up_pid, logs)
            print(f"  {name}: recovered in {seconds:.2f}s", flush=True)
            times.append(seconds)
        results[name] = {"seconds": times, "median_s": statistics.median(times)}
        print(f"{name}: median {statistics.median(times):.2f}s over {repeats} "
              f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)  # fmt: skip
    return results


def peaks() -> tuple[float, float]:
    """(predicted r*, measured peak r) of a100-scen3 under gpulet+int (e2e_peak.py)."""
    data = orjson.loads(PEAKS.read_bytes())
    found = next(s for s in data["scenarios"] if s["scenario"] == "a100-scen3")
    summary = found["summary"]["gpulet+int"]
    return float(summary["predicted_rps"]), float(summary["measured_rps"]["median"])


async def drive(urls: Sequence[str], args: argparse.Namespace, rate: float) -> RunResult:
    scenario = load_scenario(SCENARIO).time_scaled(args.time_scale)
    arrivals = schedule(scenario, rate, args.duration, np.random.default_rng(args.seed))
    configs = [RunConfig(url=u, bodies=request_bodies(scenario), progress=False,
                         slo_ms={m.name: m.slo_ms for m in scenario.models},
                         cluster_poll_s=None) for u in urls]  # fmt: skip
    # Arrivals dealt out in turn, as a round-robin balancer would.
    parts = [arrivals[i :: len(urls)] for i in range(len(urls))]
    results = await asyncio.gather(
        *(run_open_loop(p, c) for p, c in zip(parts, configs, strict=True))
    )
    records = tuple(r for result in results for r in result.records)
    return RunResult(records, (), len(arrivals), sum(r.issued for r in results),
                     max(r.send_span_s for r in results), max(r.elapsed_s for r in results),
                     sum(r.cpu_s for r in results))  # fmt: skip


def goodput(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    planned, rate = peaks()
    scenario = load_scenario(SCENARIO)
    scaled = scenario.time_scaled(args.time_scale)
    env = {"GPULET_LOG_LEVEL": "WARNING", "GPULET_RATES": ",".join(
        f"{n}={r:.4f}" for n, r in scaled.rates_at(planned).items())}  # fmt: skip
    up_args = ["--scenario", str(SCENARIO), "--time-scale", f"{args.time_scale:g}"]
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for repeat in range(args.repeats):
        for routers in ("1", "2"):
            with gpulet_up(up_args, env, logs / f"goodput-{routers}-{repeat}.log") as (
                base,
                up_pid,
            ):
                if routers == "1":
                    result = asyncio.run(drive([base], args, rate))
                else:
                    with second_router(up_pid) as (other, _):
                        wait_for(lambda: (cluster(base) or {}).get("routers", {}).get("count")
                                 == 2, "both routers registered")  # fmt: skip
                        result = asyncio.run(drive([base, other], args, rate))
            built = build_report(result.records, warmup_s=WARMUP_S, duration_s=args.duration,
                                 models={m.name: m.slo_ms for m in scaled.models})  # fmt: skip
            total = built.total
            figures = {"sent": total.sent, "ok": total.ok, "late": total.late,
                       "errors": dict(total.errors), "goodput_rps": total.goodput_rps,
                       "attainment": total.ok / total.sent if total.sent else 0.0}  # fmt: skip
            runs[routers].append(figures)
            print(
                f"  {routers} router(s): sent {total.sent}, within SLO {total.ok}, late "
                f"{total.late}, errors {dict(total.errors)}: goodput "
                f"{total.goodput_rps:.1f}/s ({figures['attainment']:.2%})",
                flush=True,
            )
    one = statistics.median(r["goodput_rps"] for r in runs["1"])
    two = statistics.median(r["goodput_rps"] for r in runs["2"])
    print(f"goodput at r={rate:g} (planned for r*={planned:g}, K={args.time_scale:g}, "
          f"{rate * 3 / args.time_scale:.0f} req/s sent): 1 router {one:.1f}/s, 2 routers "
          f"{two:.1f}/s, ratio {two / one:.3f}", flush=True)  # fmt: skip
    return {"rate_r": rate, "planned_r": planned, "time_scale": args.time_scale,
            "duration_s": args.duration, "runs": runs, "goodput_rps": {"1": one, "2": two},
            "ratio": two / one}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["recovery", "goodput", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=16.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="gpulet-resilience-"))
    print(f"system logs in {logs}", file=sys.stderr)
    data: dict[str, Any] = {"command": " ".join(sys.argv)}
    if args.what in ("recovery", "all"):
        data["recovery"] = recovery(args.repeats, logs)
    if args.what in ("goodput", "all"):
        data["goodput"] = goodput(args, logs)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
