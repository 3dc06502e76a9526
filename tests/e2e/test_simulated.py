"""Simulated GPUs in the loop: the real router and Redis, an agent serving a measured profile."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import running
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(120)
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2"}


@pytest.fixture(scope="module")
def sim(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, model_dir, models=("resnet50", "vgg16"), agent_env=SIMULATED,
        router_env={**SIMULATED, "GPULET_SLOS": "resnet50=108,vgg16=142"},
    )  # fmt: skip


def test_profile_models_answer_simulated_outputs_of_the_declared_shape(
    sim: RunningSystem,
) -> None:
    image = np.zeros((2, 3, 224, 224), np.float32)
    inputs = {"input": {"shape": [2, 3, 224, 224], "dtype": "float32",
                        "data": base64.b64encode(image.tobytes()).decode()}}  # fmt: skip
    answer = sim.post("/v1/infer", {"model": "vgg16", "inputs": inputs})
    assert answer.status == 200, answer.body
    assert answer.body["simulated"] is True
    assert answer.body["outputs"]["output"]["shape"] == [2, 1000]


def test_the_simulated_cluster_is_planned_by_gpulet_int(sim: RunningSystem) -> None:
    cluster = sim.get("/v1/cluster").body
    [agent] = cluster["agents"]
    assert agent["profile_key"] == "sim:a100-class"
    assert [d["kind"] for d in agent["devices"]] == ["simulated", "simulated"]
    placement = cluster["placement"]
    assert placement["explanation"][0].startswith("gpulet+int: feasible")
    assert {g["device_id"] for g in placement["gpulets"]} <= {"sim0", "sim1"}
    models = sim.get("/v1/models").body["models"]
    assert {m["name"]: m["default_slo_ms"] for m in models} == {"resnet50": 108.0, "vgg16": 142.0}
