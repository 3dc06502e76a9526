"""Serving through router -> agent -> worker: every model, every input form, under concurrency."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from common.models import CATALOG, model_names
from common.modelzoo.cache import onnx_path
from tests.support.reference import reference_session
from tests.support.system import RunningSystem

# The first system on a fresh machine measures its CPU profile (~30 s) before it is ready.
pytestmark = pytest.mark.timeout(300)
LONG_SLO_MS = 30_000


def b64_inputs(model: str, rng: np.random.Generator, batch: int = 1) -> dict[str, Any]:
    inputs = {}
    for t in CATALOG[model].inputs:
        shape = (batch, *t.item_shape)
        if t.dtype == "int64":
            array = rng.integers(0, 1000, shape, dtype=np.int64)
        else:
            array = rng.standard_normal(shape).astype(t.dtype)
        inputs[t.name] = array
    return inputs


def as_b64(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {"shape": list(a.shape), "dtype": a.dtype.name,
               "data": base64.b64encode(a.tobytes()).decode()}
        for name, a in arrays.items()
    }  # fmt: skip


def reference(model_dir: Path, model: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = reference_session(onnx_path(model_dir, model))
    return list(session.run(None, inputs))


@pytest.mark.parametrize("model", model_names())
def test_every_model_answers_with_the_outputs_of_its_onnx_file(
    system: RunningSystem, model_dir: Path, model: str
) -> None:
    inputs = b64_inputs(model, np.random.default_rng(1), batch=2)
    answer = system.post("/v1/infer", {"model": model, "inputs": as_b64(inputs),
                                       "slo_ms": LONG_SLO_MS, "id": f"t-{model}"})  # fmt: skip
    assert answer.status == 200, answer.body
    body = answer.body
    assert body["model"] == model and body["id"] == f"t-{model}"
    assert body["gpulet"] and body["latency_ms"] > 0
    expected = reference(model_dir, model, inputs)
    for spec, want in zip(CATALOG[model].outputs, expected, strict=True):
        out = body["outputs"][spec.name]
        assert out["dtype"] == spec.dtype and out["shape"] == list(want.shape)
        got = np.frombuffer(base64.b64decode(out["data"]), dtype=out["dtype"]).reshape(out["shape"])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_outputs_come_back_in_the_form_of_the_request(system: RunningSystem) -> None:
    data = np.arange(32, dtype=np.float32).reshape(2, 16)
    nested = system.post("/v1/infer", {"model": "noop", "inputs": {"input": data.tolist()}})
    assert nested.status == 200
    assert nested.body["outputs"]["output"] == data.tolist()
    flat = system.post("/v1/infer", {"model": "noop", "inputs": {"input": {
        "shape": [2, 16], "dtype": "float32", "data": data.reshape(-1).tolist()}}})  # fmt: skip
    assert flat.status == 200
    assert flat.body["outputs"]["output"] == {
        "shape": [2, 16], "dtype": "float32", "data": data.reshape(-1).tolist()}  # fmt: skip
    b64 = system.post("/v1/infer", {"model": "noop", "inputs": as_b64({"input": data})})
    out = b64.body["outputs"]["output"]
    assert out["shape"] == [2, 16]
    assert base64.b64decode(out["data"]) == data.tobytes()


def test_models_cluster_and_health_describe_the_running_system(system: RunningSystem) -> None:
    models = system.get("/v1/models").body["models"]
    assert sorted(m["name"] for m in models) == model_names()
    assert all(m["ready"] for m in models)
    noop = next(m for m in models if m["name"] == "noop")
    assert noop["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 16]}]
    assert noop["default_slo_ms"] == CATALOG["noop"].default_slo_ms
    assert set(noop["outcomes"]) <= {"ok", "bad_request", "deadline_exceeded", "unavailable"}
    assert noop["measured_rps"] >= 0
    cluster = system.get("/v1/cluster").body
    [agent] = cluster["agents"]
    assert agent["devices"][0]["kind"] == "cpu"
    placed = {m for g in cluster["placement"]["gpulets"] for m in (x["name"] for x in g["models"])}
    assert placed == set(model_names())
    assert all(g["state"] == "ready" for g in agent["gpulets"])
    assert system.get("/healthz").status == 200
    assert system.get("/readyz").body["status"] == "ready"


async def test_hundreds_of_concurrent_requests_across_models_are_all_answered(
    system: RunningSystem,
) -> None:
    rng = np.random.default_rng(3)
    mix = ["noop"] * 80 + ["lenet"] * 80 + ["bert_mini"] * 30 + ["mobilenet_v2"] * 30
    mix += ["resnet18"] * 10 + ["resnet50"] * 10
    bodies = [
        orjson.dumps({"model": m, "inputs": as_b64(b64_inputs(m, rng)), "slo_ms": LONG_SLO_MS,
                      "id": f"c{i}"})
        for i, m in enumerate(mix)
    ]  # fmt: skip

    async def send(session: aiohttp.ClientSession, body: bytes) -> tuple[int, Any]:
        async with session.post(f"{system.url}/v1/infer", data=body) as response:
            return response.status, await response.json()

    connector = aiohttp.TCPConnector(limit=len(bodies))
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = await asyncio.gather(*(send(session, b) for b in bodies))
    assert len(answers) == len(mix) >= 200
    failures = [(s, b) for s, b in answers if s != 200]
    assert failures == []
    assert sorted(b["id"] for _, b in answers) == sorted(f"c{i}" for i in range(len(mix)))
    for model, (_, body) in zip(mix, answers, strict=True):
        assert body["model"] == model


def test_outcomes_are_counted_per_model(system: RunningSystem) -> None:
    def count() -> int:
        models = system.get("/v1/models").body["models"]
        return int(next(m for m in models if m["name"] == "lenet")["outcomes"].get("ok", 0))

    before = count()
    for _ in range(3):
        answer = system.post("/v1/infer", {"model": "lenet",
                                           "inputs": {"input": [[[[0.0] * 28] * 28]]}})  # fmt: skip
        assert answer.status == 200
    assert count() == before + 3
