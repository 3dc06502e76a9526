"""Simulated GPUs in the loop: the real router and Redis, an agent serving a measured profile.

The agent runs its GPUs TIME_SCALE times slower than the profile, so the router is given SLOs
TIME_SCALE times longer: the plan is the one the unscaled profile and SLOs would give.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from common.profiles import find_profile
from tests.e2e.conftest import running
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(120)
TIME_SCALE = 10
SLOS_MS = {"resnet50": 108 * TIME_SCALE, "vgg16": 142 * TIME_SCALE}
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2"}


@pytest.fixture(scope="module")
def sim(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    slos = ",".join(f"{name}={ms}" for name, ms in SLOS_MS.items())
    yield from running(
        redis_url, model_dir, models=("resnet50", "vgg16"),
        agent_env={**SIMULATED, "GPULET_SIM_TIME_SCALE": str(TIME_SCALE)},
        router_env={**SIMULATED, "GPULET_SLOS": slos},
    )  # fmt: skip


def _inputs(array: np.ndarray) -> dict[str, object]:
    return {"input": {"shape": list(array.shape), "dtype": "float32",
                      "data": base64.b64encode(array.tobytes()).decode()}}  # fmt: skip


def test_profile_models_take_a_token_and_answer_simulated_outputs(sim: RunningSystem) -> None:
    tokens = np.zeros((2, 1), np.float32)
    answer = sim.post("/v1/infer", {"model": "vgg16", "inputs": _inputs(tokens)})
    assert answer.status == 200, answer.body
    assert answer.body["simulated"] is True
    assert answer.body["outputs"]["output"]["shape"] == [2, 1]


def test_an_image_for_a_profile_model_names_the_token_it_takes(sim: RunningSystem) -> None:
    image = np.zeros((1, 3, 224, 224), np.float32)
    answer = sim.post("/v1/infer", {"model": "vgg16", "inputs": _inputs(image)})
    assert (answer.status, answer.code) == (400, "bad_request")
    assert "float32[batch, 1]" in answer.body["error"]["message"]


def test_the_scaled_cluster_is_planned_by_gpulet_int(sim: RunningSystem) -> None:
    cluster = sim.get("/v1/cluster").body
    [agent] = cluster["agents"]
    assert agent["profile_key"] == f"sim:a100-class*{TIME_SCALE}"
    assert [d["kind"] for d in agent["devices"]] == ["simulated", "simulated"]
    placement = cluster["placement"]
    assert placement["explanation"][0].startswith("gpulet+int: feasible")
    assert {g["device_id"] for g in placement["gpulets"]} <= {"sim0", "sim1"}
    models = sim.get("/v1/models").body["models"]
    assert {m["name"]: m["default_slo_ms"] for m in models} == SLOS_MS


def test_a_batch_takes_the_scaled_time(sim: RunningSystem) -> None:
    planned = [
        (g["size"], m["batch_size"])
        for g in sim.get("/v1/cluster").body["placement"]["gpulets"]
        for m in g["models"]
        if m["name"] == "vgg16"
    ]
    # A request as large as every vgg16 gpu-let's planned batch fills it: it goes out at once,
    # so its latency is the batch's run time (no batching window) plus the hops.
    items = max(batch for _, batch in planned)
    tokens = _inputs(np.zeros((items, 1), np.float32))
    answer = sim.post("/v1/infer", {"model": "vgg16", "inputs": tokens})
    assert answer.status == 200, answer.body
    profile = find_profile("a100-class")
    fastest_ms = min(profile.latency_ms("vgg16", items, size) for size, _ in planned)
    # TIME_SCALE x the profile's time at least (x a slowdown >= 1 when a neighbour runs);
    # 0.9 leaves room for rounding. At the profile's own speed it would take about a tenth.
    assert answer.body["latency_ms"] >= 0.9 * TIME_SCALE * fastest_ms


def test_catalog_models_take_the_token_on_simulated_gpus(sim: RunningSystem) -> None:
    answer = sim.post(
        "/v1/infer", {"model": "resnet50", "inputs": _inputs(np.zeros((3, 1), np.float32))}
    )
    assert answer.status == 200, answer.body
    assert answer.body["simulated"] is True
    assert answer.body["outputs"]["output"]["shape"] == [3, 1]
