"""Every documented mode, end to end: each planner (`GPULET_SCHEDULER`) on real CPU workers, and
`gpulet up --simulated`, `--scenario` and `--config`, each answering real requests at the
models' default SLOs (what a user gets) with the right outputs."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from common.models import CATALOG
from common.modelzoo.cache import onnx_path
from tests.e2e.conftest import running
from tests.support import http
from tests.support.reference import reference_session
from tests.support.system import RunningSystem
from tests.support.up import clean_env, gpulet_up

# The first system on a fresh machine measures its CPU profile (~30 s) before it is ready.
pytestmark = pytest.mark.timeout(300)
# Planned on this machine's profile at their default SLOs (60 ms each): every planner finds a
# plan of its own for them on 2 cores.
MODELS = ("bert_mini", "mobilenet_v2")
SMALL = ("noop", "lenet")  # the scenario and config tests set their SLOs themselves
REQUESTS = 10
SCHEDULERS = ("static", "temporal", "greedy", "gpulet", "gpulet+int", "ideal")


def random_inputs(model: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def one(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if dtype.startswith("int"):  # token ids and masks: small non-negative integers
            return rng.integers(0, 2, shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    return {t.name: one(t.dtype, (1, *t.item_shape)) for t in CATALOG[model].inputs}


def as_b64(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.name,
                   "data": base64.b64encode(a.tobytes()).decode()}
            for name, a in arrays.items()}  # fmt: skip


def assert_serves_correct_outputs(url: str, model_dir: Path, models: tuple[str, ...]) -> None:
    """REQUESTS requests per model at its default SLO: each 200, outputs as ONNX Runtime's own."""
    rng = np.random.default_rng(7)
    for model in models:
        session = reference_session(onnx_path(model_dir, model))
        for _ in range(REQUESTS):
            inputs = random_inputs(model, rng)
            answer = http.request("POST", f"{url}/v1/infer", orjson.dumps(
                {"model": model, "inputs": as_b64(inputs)}))  # fmt: skip
            assert answer.status == 200, (model, answer.body)
            got = answer.body["outputs"]
            for meta, expected in zip(session.get_outputs(), session.run(None, inputs),
                                      strict=True):  # fmt: skip
                out = got[meta.name]
                data = np.frombuffer(base64.b64decode(out["data"]), out["dtype"])
                np.testing.assert_allclose(data.reshape(out["shape"]), expected, rtol=1e-5,
                                           atol=1e-5)  # fmt: skip


@pytest.fixture(scope="module", params=SCHEDULERS)
def planned(request: pytest.FixtureRequest, redis_url: str,
            model_dir: Path) -> Iterator[tuple[str, RunningSystem]]:  # fmt: skip
    scheduler = str(request.param)
    # The first plan is the planner's own: the test's traffic must not re-plan it midway.
    for system in running(redis_url, model_dir, models=MODELS,
                          router_env={"GPULET_SCHEDULER": scheduler,
                                      "GPULET_REPLAN_EPOCH_S": "0"}):  # fmt: skip
        yield scheduler, system


def test_every_scheduler_serves_real_requests(
    planned: tuple[str, RunningSystem], model_dir: Path
) -> None:
    scheduler, system = planned
    plan = system.get("/v1/plan").body
    assert plan["scheduler"] == scheduler
    assert {m["name"] for g in plan["gpulets"] for m in g["models"]} == set(MODELS)
    reasons = " ".join(system.get("/v1/cluster").body["placement"]["explanation"])
    if scheduler != "static":  # the planner's own plan, not the static fallback
        assert "static rule instead" not in reasons, reasons
    assert_serves_correct_outputs(system.url, model_dir, MODELS)


def test_up_simulated_serves_the_profiles_models() -> None:
    with gpulet_up(["--simulated", "a100-class", "--devices", "2", "--models",
                    "resnet50,vgg16"], clean_env()) as up:  # fmt: skip
        for model in ("resnet50", "vgg16"):
            for _ in range(REQUESTS):
                answer = http.request("POST", f"{up.url}/v1/infer", orjson.dumps(
                    {"model": model, "inputs": {"input": [[1.0], [2.0]]}}))  # fmt: skip
                assert answer.status == 200, (model, answer.body)
                assert answer.body["simulated"] is True
                assert answer.body["outputs"]["output"] == [[0.0], [0.0]]


def test_up_scenario_serves_its_models_at_its_slos(model_dir: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "cpu-small.toml"
    scenario.write_text(
        'name = "cpu-small"\ndescription = "two small models on one core"\n'
        '[cluster]\nkind = "cpu"\ndevices = 1\n[rate]\nmode = "fixed"\n'
        '[[models]]\nname = "noop"\nslo_ms = 20\nweight = 50\n'
        '[[models]]\nname = "lenet"\nslo_ms = 25\nweight = 20\n'
    )
    env = clean_env({"GPULET_MODEL_DIR": str(model_dir)})
    with gpulet_up(["--scenario", str(scenario)], env) as up:
        served = {m["name"]: m for m in http.request("GET", f"{up.url}/v1/models").body["models"]}
        assert {n: m["default_slo_ms"] for n, m in served.items()} == {"noop": 20, "lenet": 25}
        cluster = http.request("GET", f"{up.url}/v1/cluster").body
        assert [len(d["cores"]) for a in cluster["agents"] for d in a["devices"]] == [1]
        assert_serves_correct_outputs(up.url, model_dir, SMALL)


def test_up_config_serves_its_models_at_its_slos_and_rates(
    model_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text('[[models]]\nname = "noop"\nslo_ms = 30\nrate_rps = 100\n'
                      '[[models]]\nname = "lenet"\nslo_ms = 40\nrate_rps = 20\n')  # fmt: skip
    env = clean_env({"GPULET_MODEL_DIR": str(model_dir)})
    with gpulet_up(["--config", str(config)], env) as up:
        served = {m["name"]: m for m in http.request("GET", f"{up.url}/v1/models").body["models"]}
        assert {n: m["default_slo_ms"] for n, m in served.items()} == {"noop": 30, "lenet": 40}
        plan = http.request("GET", f"{up.url}/v1/plan").body
        planned_rps = {m["name"]: m["planned_rps"] for g in plan["gpulets"] for m in g["models"]}
        assert planned_rps.keys() == {"noop", "lenet"}
        assert_serves_correct_outputs(up.url, model_dir, SMALL)


def test_up_serving_cores_keeps_a_core_for_router_agent_and_redis(model_dir: Path) -> None:
    import psutil

    cores = sorted(os.sched_getaffinity(0))
    env = clean_env({"GPULET_MODEL_DIR": str(model_dir)})
    with gpulet_up(["--models", "noop,lenet", "--serving-cores", "1"], env) as up:
        cluster = http.request("GET", f"{up.url}/v1/cluster").body
        (device,) = [d for a in cluster["agents"] for d in a["devices"]]
        assert device["cores"] == cores[1:] and device["sharing"] == "dedicated"
        family = psutil.Process(up.process.pid).children(recursive=True)
        serving = [p for p in family
                   if any(part in ("router", "agent") for part in p.cmdline()[-1:])]  # fmt: skip
        assert len(serving) == 2
        assert all(p.cpu_affinity() == cores[:1] for p in serving)
        assert_serves_correct_outputs(up.url, model_dir, SMALL)


def test_serving_cpu_ms_is_charged_against_the_shared_cores(
    redis_url: str, model_dir: Path
) -> None:
    peaks = {}
    for cost in ("noop=0,lenet=0", "noop=5,lenet=5"):
        for system in running(redis_url, model_dir, models=SMALL,
                              router_env={"GPULET_SERVING_CPU_MS": cost}):  # fmt: skip
            peaks[cost] = system.get("/v1/plan?peak=true").body["peak"]
            assert_serves_correct_outputs(system.url, model_dir, SMALL)
    free, charged = peaks["noop=0,lenet=0"], peaks["noop=5,lenet=5"]
    # 5 ms of serving a request on 2 shared cores: at most 0.8 x 2 cores / 10 ms = 160 req/s
    # of each model, whatever the workers could do.
    assert free["peak_rps"] > 160
    assert charged["peak_rps"] <= 160
    assert any("serving CPU" in line for line in charged["plan"]["explanation"])


def batches_sent(url: str) -> dict[tuple[str, str], float]:
    text = http.request("GET", f"{url}/metrics").body
    assert isinstance(text, str)
    found = re.findall(
        r'^gpulet_batches_sent_total\{path="(\w+)",transport="(\w+)"\} (\S+)$', text, re.M
    )
    return {(path, transport): float(count) for path, transport, count in found}


@pytest.mark.parametrize("direct", ["true", "false"])
@pytest.mark.parametrize("shm", ["true", "false"])
def test_batches_take_the_paths_their_settings_allow(
    redis_url: str, model_dir: Path, shm: str, direct: str
) -> None:
    """GPULET_DIRECT_TO_WORKERS: batches to the workers' own sockets or through the agent;
    GPULET_SHARED_MEMORY: large ones through /dev/shm or inline. Every way answers right."""
    models = ("noop", "mobilenet_v2")  # a 64 B and a 602 KB input
    env = {"GPULET_SHARED_MEMORY": shm, "GPULET_DIRECT_TO_WORKERS": direct}
    for system in running(redis_url, model_dir, models=models, router_env=env):
        before = batches_sent(system.url)
        assert_serves_correct_outputs(system.url, model_dir, models)
        after = batches_sent(system.url)
        sent = {key: after[key] - before.get(key, 0.0) for key in after}
        path, other = ("worker", "agent") if direct == "true" else ("agent", "worker")
        strays = sent[other, "inline"] + sent[other, "shared_memory"]
        # Through the agent only while a link opens, for a gpu-let a re-plan just started.
        assert strays == 0 if direct == "false" else strays <= 2, sent
        # Every mobilenet_v2 batch through /dev/shm when on (a batch may hold several of its
        # requests), none when off; noop's, small, always inline.
        if shm == "true":
            assert 1 <= sent[path, "shared_memory"] <= REQUESTS and sent[path, "inline"] >= 1
        else:
            assert sent[path, "shared_memory"] == 0 and sent[path, "inline"] >= 2
