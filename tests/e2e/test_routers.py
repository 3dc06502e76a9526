"""Two routers on one cluster: both serve, exactly one holds the planner lease, each admits
against half of every gpu-let; SIGKILL of the lease holder under load: the other takes the
lease and plans within 5 s, and no request goes unanswered (clients retry on a refused or
dropped connection, as behind a load balancer)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import running
from tests.support import http
from tests.support.load import Load
from tests.support.system import RunningSystem, wait_until

pytestmark = pytest.mark.timeout(180)

TAKEOVER_LIMIT_S = 5.0  # the bound: the survivor plans within this
TIME_SCALE = 10
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2",
             "GPULET_SIM_TIME_SCALE": str(TIME_SCALE)}  # fmt: skip
SLOS = f"resnet50={108 * TIME_SCALE},vgg16={142 * TIME_SCALE}"
TOKEN = {"model": "resnet50", "inputs": {"input": [[0.0]]}}


@pytest.fixture
def two(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, model_dir, models=("resnet50", "vgg16"), routers=2, agent_env=SIMULATED,
        router_env={**SIMULATED, "GPULET_SLOS": SLOS, "GPULET_LOG_LEVEL": "INFO"},
    )  # fmt: skip


def roles(url: str) -> dict[str, Any] | None:
    try:
        answer = http.request("GET", url + "/v1/cluster", timeout_s=5)
    except OSError:
        return None
    return answer.body["routers"] if answer.status == 200 else None


def test_both_serve_one_plans_each_admits_against_half(two: RunningSystem) -> None:
    wait_until(lambda: all((roles(u) or {}).get("count") == 2 for u in two.urls.values()), 10,
               "both routers to see each other")  # fmt: skip
    seen = {name: roles(url) for name, url in two.urls.items()}
    assert sum(1 for r in seen.values() if r and r["leading"]) == 1, seen
    assert {r["capacity_share"] for r in seen.values() if r} == {0.5}
    leaders = {r["leader"] for r in seen.values() if r}
    assert len(leaders) == 1
    for url in two.urls.values():
        answer = http.request("POST", url + "/v1/infer",
                              b'{"model": "vgg16", "inputs": {"input": [[0.0]]}}')  # fmt: skip
        assert answer.status == 200, answer.body
    # Model load/unload would change one router's models only: refused while two share it.
    refused = http.request("POST", two.url + "/v2/repository/models/vgg16/unload", b"")
    assert refused.status == 409 and refused.body["code"] == "not_loadable"


def test_sigkill_of_the_lease_holder_under_load(two: RunningSystem) -> None:
    wait_until(lambda: all((roles(u) or {}).get("count") == 2 for u in two.urls.values()), 10,
               "both routers to see each other")  # fmt: skip
    version = two.get("/v1/cluster").body["placement"]["version"]
    with Load(lambda: list(two.urls.values()), "/v1/infer", TOKEN, clients=4) as load:
        wait_until(lambda: load.count(200) >= 40, 30, "load through both routers")
        holder = next(n for n, u in two.urls.items() if (roles(u) or {}).get("leading"))
        survivor = next(u for n, u in two.urls.items() if n != holder)
        two.processes[holder].kill()
        killed = time.monotonic()
        wait_until(lambda: (roles(survivor) or {}).get("leading"), TAKEOVER_LIMIT_S,
                   "the survivor to take the planner lease")  # fmt: skip
        takeover_s = time.monotonic() - killed
        # It plans: a new agent joins and the survivor places gpu-lets on it too.
        two.start_agent("agent2", SIMULATED)

        def replanned() -> bool:
            placement = http.request("GET", survivor + "/v1/cluster").body["placement"]
            # Planned on both agents' devices (2 simulated GPUs each).
            return placement["version"] > version and "of 4 devices" in placement[
                "explanation"][0]  # fmt: skip

        wait_until(replanned, 15, "the survivor to plan with the new agent")
        served = load.count(200)
        wait_until(lambda: load.count(200) >= served + 40, 30, "the survivor to serve")
    assert load.lost == 0
    statuses = {a.status for a in load.answers}
    assert statuses <= {200, 502, 503}, statuses
    assert all(a.code for a in load.answers if a.status != 200)
    shares = roles(survivor)
    assert shares is not None and shares["count"] == 1 and shares["capacity_share"] == 1.0
    print(f"takeover in {takeover_s:.2f}s; answers {len(load.answers)} "
          f"({load.count(200)} ok); retried {dict(load.dropped)}")  # fmt: skip
