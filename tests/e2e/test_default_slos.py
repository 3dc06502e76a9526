"""What a user gets by default: every model answers at its default SLO on this machine's default
plan, after small models' traffic has run beside it (their batches must not teach the router
that every model on their gpu-let is slow), and under each planner a user may choose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.models import CATALOG, model_names
from tests.e2e.conftest import running
from tests.support.system import RunningSystem

# The first system on a fresh machine measures its CPU profile (~30 s) before it is ready.
pytestmark = pytest.mark.timeout(300)
SMALL_MODELS = ("noop", "lenet")
SMALL_TRAFFIC = 200
SEQUENTIAL = 20


def zeros_body(model: str) -> dict[str, Any]:
    """A request as a user writes it: nested lists, no slo_ms (the model's default)."""
    inputs = {t.name: np.zeros((1, *t.item_shape), t.dtype).tolist() for t in CATALOG[model].inputs}
    return {"model": model, "inputs": inputs}


def answer_every_model_at_its_default_slo(system: RunningSystem) -> None:
    for model in SMALL_MODELS:
        for _ in range(SMALL_TRAFFIC):
            answer = system.post("/v1/infer", zeros_body(model))
            assert answer.status == 200, (model, answer.body)
    refused: dict[str, list[Any]] = {}
    for model in model_names():
        for _ in range(SEQUENTIAL):
            answer = system.post("/v1/infer", zeros_body(model))
            if answer.status != 200:
                refused.setdefault(model, []).append((answer.status, answer.body))
    assert refused == {}, refused


@pytest.fixture(scope="module")
def static_system(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(redis_url, model_dir, models=tuple(model_names()),
                       router_env={"GPULET_SCHEDULER": "static"})  # fmt: skip


def test_every_model_answers_at_its_default_slo_after_small_model_traffic(
    system: RunningSystem,
) -> None:
    answer_every_model_at_its_default_slo(system)
    # What the router learned is per model: the tiny models' figures are their own.
    cluster = system.get("/v1/cluster").body
    learned = {
        model: figures
        for agent in cluster["agents"]
        for gpulet in agent["gpulets"]
        for model, figures in gpulet["learned"].items()
    }
    assert set(learned) == set(model_names())
    assert all(f["samples"] > 0 for f in learned.values()), learned
    # noop's learned figure stays the small-model figure it is, not the big models' time.
    assert learned["noop"]["compute_ms"] < learned["resnet50"]["compute_ms"] / 10


def test_the_static_rule_serves_every_model(static_system: RunningSystem) -> None:
    answer_every_model_at_its_default_slo(static_system)
    plan = static_system.get("/v1/plan").body
    assert plan["gpulets"] and all(g["duty_cycle_ms"] == 0 for g in plan["gpulets"])
