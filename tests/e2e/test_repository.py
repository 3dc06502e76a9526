"""Model management end to end: load -> infer -> unload of a model on simulated GPUs while
another model keeps serving, and the repository index's states, through the router's /v2."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import running
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(120)
# Simulated GPUs 10x slower than the profile (SLOs x 10), as in test_simulated.py.
TIME_SCALE = 10
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2"}
TOKEN = {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}
REPOSITORY = "/v2/repository"


@pytest.fixture(scope="module")
def sim(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, model_dir, models=("resnet50",),
        agent_env={**SIMULATED, "GPULET_SIM_TIME_SCALE": str(TIME_SCALE)},
        router_env={**SIMULATED, "GPULET_SLOS": f"resnet50={108 * TIME_SCALE}",
                    "GPULET_MODEL_LOAD_TIMEOUT_S": "60"},
    )  # fmt: skip


def states(sim: RunningSystem) -> dict[str, tuple[str, str]]:
    answer = sim.post(f"{REPOSITORY}/index", {})
    assert answer.status == 200, answer.body
    return {row["name"]: (row["state"], row["reason"]) for row in answer.body}


class Traffic:
    """Requests to one model, one after another on a thread, until stopped: their statuses."""

    def __init__(self, sim: RunningSystem, model: str) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sim, model), daemon=True)

    def _run(self, sim: RunningSystem, model: str) -> None:
        while not self._stop.is_set():
            answer = sim.post(f"/v2/models/{model}/infer", TOKEN, timeout_s=30.0)
            self.statuses[answer.status] += 1
            if answer.status != 200:
                self.errors.append(answer.body)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)
        assert not self._thread.is_alive()


def test_load_infer_unload_under_traffic_fails_no_request_of_the_other_model(
    sim: RunningSystem,
) -> None:
    assert states(sim)["vgg16"] == ("UNAVAILABLE", "not loaded")
    assert sim.post("/v2/models/vgg16/infer", TOKEN).status == 404
    with Traffic(sim, "resnet50") as traffic:
        loaded = sim.post(f"{REPOSITORY}/models/vgg16/load",
                          {"parameters": {"slo_ms": 142 * TIME_SCALE}})  # fmt: skip
        assert (loaded.status, loaded.body) == (200, {}), loaded.body
        assert states(sim)["vgg16"] == ("READY", "")
        assert sim.get("/v2/models/vgg16/ready").status == 200
        assert sim.get("/readyz").status == 200
        for _ in range(5):
            answer = sim.post("/v2/models/vgg16/infer", TOKEN)
            assert answer.status == 200, answer.body
            assert answer.body["outputs"][0]["shape"] == [1, 1]
        assert "vgg16" in {m["name"] for m in sim.get("/v1/models").body["models"]}

        # Requests to the model being unloaded are answered, or refused as unknown once it is.
        with Traffic(sim, "vgg16") as leaving:
            unloaded = sim.post(f"{REPOSITORY}/models/vgg16/unload", {})
        assert (unloaded.status, unloaded.body) == (200, {}), unloaded.body
        assert set(leaving.statuses) <= {200, 404}, leaving.errors
        gone = sim.post("/v2/models/vgg16/infer", TOKEN)
        assert (gone.status, gone.body["code"]) == (404, "unknown_model")
        assert sim.get("/v2/models/vgg16").status == 404
        assert sim.post("/v1/infer", {"model": "vgg16", "inputs": {"input": [[0.0]]}}).status \
            == 404  # fmt: skip
        assert states(sim)["vgg16"] == ("UNAVAILABLE", "unloaded")
        # The unloaded model's gpu-lets leave the placement.
        placement = sim.get("/v1/cluster").body["placement"]
        assert all("vgg16" not in [m["name"] for m in g["models"]]
                   for g in placement["gpulets"])  # fmt: skip
    assert traffic.errors == []
    assert traffic.statuses[200] > 0
    assert states(sim)["resnet50"] == ("READY", "")


def test_index_lists_the_profile_models_and_filters_ready_ones(sim: RunningSystem) -> None:
    listed = states(sim)
    assert listed["resnet50"] == ("READY", "")
    assert {"resnet50", "vgg16", "mobilenet_v2"} <= set(listed)
    ready = sim.post(f"{REPOSITORY}/index", {"ready": True})
    assert [row["name"] for row in ready.body] == ["resnet50"]
    assert ready.body[0]["version"] == "1"


def test_loading_or_unloading_an_unknown_model_is_404(sim: RunningSystem) -> None:
    load = sim.post(f"{REPOSITORY}/models/resnet1000/load", {})
    assert (load.status, load.body["code"]) == (404, "unknown_model")
    assert "resnet1000" in load.body["error"]  # OIP's shape: the message is the error
    unload = sim.post(f"{REPOSITORY}/models/resnet1000/unload", {})
    assert (unload.status, unload.body["code"]) == (404, "unknown_model")
    not_loaded = sim.post(f"{REPOSITORY}/models/vgg16/unload", {})
    assert (not_loaded.status, not_loaded.body["code"]) == (404, "unknown_model")


def test_a_model_the_profile_lacks_is_refused_with_why(sim: RunningSystem) -> None:
    answer = sim.post(f"{REPOSITORY}/models/noop/load", {})  # a catalog model; no profile rows
    assert (answer.status, answer.body["code"]) == (409, "not_loadable")
    assert "no rows for noop" in answer.body["error"]
    assert "noop" not in states(sim)  # the index lists what the profile can serve


def test_an_slo_no_plan_meets_is_refused_and_changes_nothing(sim: RunningSystem) -> None:
    answer = sim.post(f"{REPOSITORY}/models/vgg16/load", {"parameters": {"slo_ms": 0.001}})
    assert (answer.status, answer.body["code"]) == (422, "slo_unattainable")
    assert states(sim)["vgg16"][0] == "UNAVAILABLE"
    assert sim.get("/readyz").status == 200


def test_load_parameters_are_checked(sim: RunningSystem) -> None:
    answer = sim.post(f"{REPOSITORY}/models/vgg16/load", {"parameters": {"slo_ms": -1}})
    assert (answer.status, answer.body["code"]) == (400, "bad_request")
    assert "slo_ms" in answer.body["error"]


def test_server_metadata_lists_the_repository_extension(sim: RunningSystem) -> None:
    assert "model_repository" in sim.get("/v2").body["extensions"]


def test_tritonclient_manages_the_repository(sim: RunningSystem) -> None:
    triton = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    # tritonclient's load_model sends no SLO: load with ours, manage with the client.
    loaded = sim.post(f"{REPOSITORY}/models/vgg16/load",
                      {"parameters": {"slo_ms": 142 * TIME_SCALE}})  # fmt: skip
    assert loaded.status == 200, loaded.body
    client = triton.InferenceServerClient(url=sim.url.removeprefix("http://"))
    try:
        index = client.get_model_repository_index()
        assert sorted(r["name"] for r in index if r["state"] == "READY") == ["resnet50", "vgg16"]
        client.load_model("vgg16")  # loaded already: nothing to do
        assert client.is_model_ready("vgg16")
        client.unload_model("vgg16")
        assert not client.is_model_ready("vgg16")
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="no rows for noop"):
            client.load_model("noop")
    finally:
        client.close()
