"""Model load on a CPU agent, which measures its own profile: a catalog model the agent neither
built nor profiled is built and measured on request, then planned and served.

The system gets a model directory of its own (so the profile cache beside it starts empty) and
profiles at batches 1 and 2 only, to keep the measuring short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from common.models import NOOP_WIDTH
from common.modelzoo.build import build_missing
from common.modelzoo.cache import is_current
from common.profiles import DeviceProfile
from tests.e2e.conftest import running
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(240)
REPOSITORY = "/v2/repository"
PROFILE_ENV = {"GPULET_PROFILE_BATCHES": "1,2", "GPULET_MODELS": "lenet"}


@pytest.fixture(scope="module")
def own_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gpulet-cache") / "models"
    build_missing(directory, ["lenet"], progress=False)
    return directory


@pytest.fixture  # per test: the load starts worker processes, which must stop with the test
def cpu(redis_url: str, own_model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, own_model_dir, models=("lenet",), agent_env=PROFILE_ENV,
        router_env={"GPULET_MODEL_LOAD_TIMEOUT_S": "150"},
    )  # fmt: skip


def profiled_models(sim: RunningSystem) -> set[str]:
    """The models the agents' measured profile has rows for, read from Redis."""
    key = sim.get("/v1/cluster").body["agents"][0]["profile_key"]
    client = redis.Redis.from_url(sim.redis_url)
    try:
        stored = client.hget(f"{sim.prefix}profile:{key}", "profile")
    finally:
        client.close()
    assert isinstance(stored, bytes), f"no profile stored under {key}"
    return set(DeviceProfile.from_json(orjson.loads(stored)).models())


def test_loading_a_model_the_agent_never_measured_builds_profiles_and_serves_it(
    cpu: RunningSystem, own_model_dir: Path
) -> None:
    assert cpu.get("/v1/cluster").body["agents"][0]["profile_key"].startswith("cpu:")
    assert not is_current(own_model_dir, "noop")
    assert "noop" not in profiled_models(cpu)

    loaded = cpu.post(f"{REPOSITORY}/models/noop/load", {}, timeout_s=200.0)

    assert (loaded.status, loaded.body) == (200, {}), loaded.body
    assert is_current(own_model_dir, "noop")
    assert profiled_models(cpu) == {"lenet", "noop"}
    row = [1.0 * i for i in range(NOOP_WIDTH)]
    answer = cpu.post("/v1/infer", {"model": "noop", "inputs": {"input": [row]}})
    assert answer.status == 200, answer.body
    assert answer.body["outputs"]["output"] == [row]
    # The planner placed it on the measured rows, not the static rule.
    plan = cpu.get("/v1/plan").body
    assert plan["scheduler"] != "static"
    placed = {m["name"] for g in cpu.get("/v1/cluster").body["placement"]["gpulets"]
              for m in g["models"]}  # fmt: skip
    assert placed == {"lenet", "noop"}
    assert cpu.post("/v1/infer", {"model": "lenet", "inputs": {"input": [[[[0.0] * 28] * 28]]}}) \
        .status == 200  # fmt: skip
