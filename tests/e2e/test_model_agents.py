"""Two agents, one router, the model folder visible to one agent only: the other gets each model's
file from the router by sha256, verifies it, caches it in its own model folder, and serves it.

Agent A sees the repository (GPULET_MODEL_REPOSITORY) and uses its files in place; agent B does
not. Each has a model folder of its own and one core. Once both serve, A stops, and B alone
answers every model (a model loaded after start included) as ONNX Runtime does in this process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from common.procs import die_with_parent, free_port, stop_process
from tests.e2e.conftest import running
from tests.support.repo_models import HalfNet, Pair, export, reference
from tests.support.system import RunningSystem, wait_until

pytestmark = pytest.mark.timeout(300)
REPOSITORY = "/v2/repository"
AGENT_B = "agent-b"
PROFILE = {"GPULET_PROFILE_BATCHES": "1,2", "GPULET_HEARTBEAT_INTERVAL_S": "0.2",
           "GPULET_HEARTBEAT_TTL_S": "2"}  # fmt: skip
X = np.linspace(-1, 1, 12, dtype=np.float16).reshape(2, 6)
A_IN, N_IN = np.ones((1, 4), np.float32), np.array([[1, -5, 0, 2]], np.int32)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "repository"
    export(HalfNet(), (torch.from_numpy(X),), folder / "ok" / "1" / "model.onnx", ["x"], ["y"])
    export(Pair(), (torch.ones(2, 4), torch.ones(2, 4, dtype=torch.int32)),
           folder / "pair" / "1" / "model.onnx", ["a", "n"], ["total", "positive"])  # fmt: skip
    return folder


@pytest.fixture
def two_agents(redis_url: str, root: Path, tmp_path: Path) -> Iterator[tuple[RunningSystem, Path]]:
    """The router and agent A (the repository on its disk), then agent B (none) beside them."""
    b_models = tmp_path / "b-models"
    for system in running(
        redis_url, tmp_path / "a-models", models=("ok",), ready=False,
        router_env={"GPULET_MODEL_REPOSITORY": str(root)},
        agent_env={**PROFILE, "GPULET_MODEL_REPOSITORY": str(root), "GPULET_MODELS": "ok",
                   "GPULET_AGENT_CORES": "0"},
    ):  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "GPULET_MODEL_REPOSITORY"}
        agent_b = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "agent"],
            env={**env, **PROFILE, "GPULET_REDIS_URL": system.redis_url,
                 "GPULET_REDIS_PREFIX": system.prefix, "GPULET_MODEL_DIR": str(b_models),
                 "GPULET_AGENT_ID": AGENT_B, "GPULET_AGENT_PORT": str(free_port()),
                 "GPULET_MODELS": "ok", "GPULET_AGENT_CORES": "1", "GPULET_LOG_LEVEL": "WARNING"},
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            system.wait_ready()
            yield system, b_models
        finally:
            stop_process(agent_b, timeout_s=10.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_by(system: RunningSystem, body: dict[str, object]) -> tuple[str, dict[str, object]]:
    answer = system.post("/v1/infer", {**body, "slo_ms": 5000})
    assert answer.status == 200, answer.body
    return str(answer.body["gpulet"]), answer.body["outputs"]


def test_an_agent_without_the_folder_fetches_verifies_caches_and_serves(
    two_agents: tuple[RunningSystem, Path], root: Path, tmp_path: Path
) -> None:
    system, b_models = two_agents
    agents = wait_until(lambda: [a["agent_id"] for a in system.get("/v1/cluster").body["agents"]
                                 if a.get("profile_key")] or None, 60, "agents")  # fmt: skip
    assert AGENT_B in agents and len(agents) == 2
    ok_file, pair_file = root / "ok" / "1" / "model.onnx", root / "pair" / "1" / "model.onnx"
    cached = b_models / "repository"
    assert (cached / f"{sha256(ok_file)}.onnx").read_bytes() == ok_file.read_bytes()
    assert not (tmp_path / "a-models" / "repository").exists()  # A used the folder in place

    loaded = system.post(f"{REPOSITORY}/models/pair/load", {}, timeout_s=200.0)
    assert (loaded.status, loaded.body) == (200, {}), loaded.body
    assert (cached / f"{sha256(pair_file)}.onnx").read_bytes() == pair_file.read_bytes()

    stop_process(system.processes.pop("agent"), timeout_s=10.0)  # agent A goes
    ok_body = {"model": "ok", "inputs": {"x": X.astype(np.float32).tolist()}}
    pair_body = {"model": "pair", "inputs": {"a": A_IN.tolist(), "n": N_IN.tolist()}}

    def on_b(body: dict[str, object]) -> bool:
        # Until the router sees A gone (its heartbeat expires), A's gpu-lets answer 503.
        answer = system.post("/v1/infer", {**body, "slo_ms": 5000})
        return answer.status == 200 and str(answer.body["gpulet"]).startswith(AGENT_B)

    wait_until(lambda: on_b(ok_body) and on_b(pair_body), 60, "agent B to serve both")
    _, ok_out = served_by(system, ok_body)
    want = reference(ok_file, {"x": X})["y"]
    np.testing.assert_allclose(np.asarray(ok_out["y"], np.float16), want, rtol=1e-3, atol=1e-3)
    _, pair_out = served_by(system, pair_body)
    expected = reference(pair_file, {"a": A_IN, "n": N_IN})
    np.testing.assert_array_equal(np.asarray(pair_out["total"], np.float32), expected["total"])
    np.testing.assert_array_equal(np.asarray(pair_out["positive"]), expected["positive"])
