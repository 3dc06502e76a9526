"""A model repository in Triton's layout, served end to end: models the zoo does not have (built
here from torch modules), each answering through /v1/infer and tritonclient exactly what ONNX
Runtime answers in this process for the same file; versions; the repository API on the folder.

Served from the start: tagger (versions 1 and 2: ids int64 + mask float32) and thumbs (uint8
image, gpulet.toml SLO). Loaded by the tests, one at a time and unloaded after: halfnet (float16),
pair (config.pbtxt: two inputs, int32 and bool, max_batch_size 8), fixed (no batch axis), and a
model folder added while running. The static rule places them: on this machine's two cores the
planner finds no plan for three or more models at all (it falls back to the same rule), and the
planner's path for repository models is tested in test_model_agents.py and test_bad_models.py.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import running
from tests.support.repo_models import RepoModel, build_repository, reference
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(300)
REPOSITORY = "/v2/repository"
SLO_MS = 5000  # generous: these tests check answers, not speed, on a shared machine
START = ("tagger", "thumbs")
AGENT_START = "tagger,tagger@1,thumbs"  # served versions: the latest under its own name
TOLERANCE = {"float32": 1e-5, "float16": 1e-3}  # float16 keeps ~3 significant digits


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RepoModel]]:
    root = tmp_path_factory.mktemp("repository")
    return root, build_repository(root)


def system(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, root: Path
) -> Iterator[RunningSystem]:
    yield from running(
        redis_url, tmp_path_factory.mktemp("cache") / "models", models=START,
        router_env={"GPULET_MODEL_REPOSITORY": str(root), "GPULET_SCHEDULER": "static"},
        # The static rule needs no profile: the agent measures none (and so, once it is ready,
        # starts no process a test would see as its own).
        agent_env={"GPULET_MODEL_REPOSITORY": str(root), "GPULET_MODELS": AGENT_START,
                   "GPULET_PROFILE_ON_START": "false"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory,
    repo: tuple[Path, dict[str, RepoModel]],
) -> Iterator[RunningSystem]:  # fmt: skip
    yield from system(redis_url, tmp_path_factory, repo[0])


@pytest.fixture  # per test: a load starts worker processes, which must stop with the test
def fresh(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory,
    repo: tuple[Path, dict[str, RepoModel]],
) -> Iterator[RunningSystem]:  # fmt: skip
    yield from system(redis_url, tmp_path_factory, repo[0])


@pytest.fixture
def fresh_client(fresh: RunningSystem) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=fresh.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(served: RunningSystem) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def assert_same(got: dict[str, np.ndarray], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        actual = np.asarray(got[name])
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        tolerance = TOLERANCE.get(expected.dtype.name)
        if tolerance is None:  # integers and booleans: equal
            np.testing.assert_array_equal(actual, expected)
        else:
            np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


def via_v1(served: RunningSystem, name: str, model: RepoModel) -> dict[str, np.ndarray]:
    """/v1/infer with base64 inputs (exact bytes of every dtype)."""
    inputs = {k: {"shape": list(v.shape), "dtype": v.dtype.name,
                  "data": base64.b64encode(v.tobytes()).decode()}
              for k, v in model.inputs.items()}  # fmt: skip
    answer = served.post("/v1/infer", {"model": name, "inputs": inputs, "slo_ms": SLO_MS})
    assert answer.status == 200, answer.body
    return {k: np.frombuffer(base64.b64decode(o["data"]), o["dtype"]).reshape(o["shape"])
            for k, o in answer.body["outputs"].items()}  # fmt: skip


def via_triton(
    client: triton.InferenceServerClient, name: str, model: RepoModel, *, binary: bool,
    version: str = "",
) -> dict[str, np.ndarray]:  # fmt: skip
    tensors = []
    for key, value in model.inputs.items():
        datatype = triton.np_to_triton_dtype(value.dtype)
        tensor = triton.InferInput(key, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    wanted = [triton.InferRequestedOutput(o, binary_data=binary) for o in model.outputs]
    result = client.infer(name, tensors, model_version=version, outputs=wanted,
                          parameters={"slo_ms": SLO_MS})  # fmt: skip
    return {o: result.as_numpy(o) for o in model.outputs}


@contextlib.contextmanager
def loaded(served: RunningSystem, name: str, parameters: dict[str, Any] | None = None
           ) -> Iterator[None]:  # fmt: skip
    answer = served.post(f"{REPOSITORY}/models/{name}/load",
                         {"parameters": parameters} if parameters else {}, timeout_s=200.0)
    assert (answer.status, answer.body) == (200, {}), answer.body
    try:
        yield
    finally:
        gone = served.post(f"{REPOSITORY}/models/{name}/unload", {}, timeout_s=200.0)
        assert (gone.status, gone.body) == (200, {}), gone.body


def file_of(root: Path, name: str, version: str = "1") -> Path:
    return root / name / version / "model.onnx"


def index(served: RunningSystem) -> dict[tuple[str, str], tuple[str, str]]:
    rows = served.post(f"{REPOSITORY}/index", {}).body
    return {(r["name"], r["version"]): (r["state"], r["reason"]) for r in rows}


def test_the_index_lists_every_model_and_version_of_the_folder(served: RunningSystem) -> None:
    rows = index(served)
    assert rows[("tagger", "1")][0] == rows[("tagger", "2")][0] == "READY"
    assert rows[("thumbs", "1")][0] == "READY"
    assert rows[("pair", "1")] == rows[("fixed", "1")] == ("UNAVAILABLE", "not loaded")


def test_served_models_answer_what_onnx_runtime_answers(
    served: RunningSystem, client: triton.InferenceServerClient,
    repo: tuple[Path, dict[str, RepoModel]],
) -> None:  # fmt: skip
    root, models = repo
    for name in ("tagger", "thumbs"):
        model = models[name]
        want = reference(file_of(root, name, "2" if name == "tagger" else "1"), model.inputs)
        assert_same(via_v1(served, name, model), want)
        assert_same(via_triton(client, name, model, binary=False), want)
        assert_same(via_triton(client, name, model, binary=True), want)


def test_a_version_is_addressed_by_its_number(
    served: RunningSystem, client: triton.InferenceServerClient,
    repo: tuple[Path, dict[str, RepoModel]],
) -> None:  # fmt: skip
    root, models = repo
    tagger = models["tagger"]
    first, second = (reference(file_of(root, "tagger", v), tagger.inputs) for v in ("1", "2"))
    assert not np.allclose(first["scores"], second["scores"])  # two different models
    assert_same(via_triton(client, "tagger", tagger, binary=True, version="1"), first)
    assert_same(via_triton(client, "tagger", tagger, binary=True, version="2"), second)
    assert_same(via_triton(client, "tagger", tagger, binary=True), second)  # latest by default
    assert client.get_model_metadata("tagger")["versions"] == ["1", "2"]
    with pytest.raises(InferenceServerException, match="no version '3' served"):
        via_triton(client, "tagger", tagger, binary=True, version="3")


def test_loaded_models_answer_what_onnx_runtime_answers(
    fresh: RunningSystem, fresh_client: triton.InferenceServerClient,
    repo: tuple[Path, dict[str, RepoModel]],
) -> None:  # fmt: skip
    served, client = fresh, fresh_client
    root, models = repo
    client.load_model("pair")  # tritonclient's repository calls
    assert index(served)[("pair", "1")] == ("READY", "")
    try:
        want = reference(file_of(root, "pair"), models["pair"].inputs)
        assert_same(via_v1(served, "pair", models["pair"]), want)
        assert_same(via_triton(client, "pair", models["pair"], binary=False), want)
        assert_same(via_triton(client, "pair", models["pair"], binary=True), want)
    finally:
        client.unload_model("pair")
    for name in ("fixed", "halfnet"):
        with loaded(served, name, {"slo_ms": 3000}):
            model = models[name]
            want = reference(file_of(root, name), model.inputs)
            assert_same(via_v1(served, name, model), want)
            assert_same(via_triton(client, name, model, binary=False), want)
            assert_same(via_triton(client, name, model, binary=True), want)
    # What each signature says, from the graph and the config.
    with loaded(served, "fixed"):
        fixed = client.get_model_metadata("fixed")
        assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [3, 5]}]
        assert client.get_model_config("fixed")["max_batch_size"] == 0
        batched = served.post("/v1/infer", {"model": "fixed", "inputs": {"x": [[[0.0] * 5] * 3]}})
        assert batched.status == 400
        assert "no batch axis" in batched.body["error"]["message"]
    with loaded(served, "pair"):
        pair = client.get_model_metadata("pair")
        assert [(t["name"], t["datatype"], t["shape"]) for t in pair["outputs"]] == \
            [("total", "FP32", [-1, 4]), ("positive", "BOOL", [-1, 4])]  # fmt: skip
        assert client.get_model_config("pair")["max_batch_size"] == 8
        nine = {"a": [[1.0] * 4] * 9, "n": [[1] * 4] * 9}
        answer = served.post("/v1/infer", {"model": "pair", "inputs": nine})
        assert answer.status == 400
        assert "max_batch_size of 8" in answer.body["error"]["message"]
    slos = {m["name"]: m["default_slo_ms"] for m in served.get("/v1/models").body["models"]}
    assert slos["thumbs"] == 2000.0  # gpulet.toml


def test_a_model_folder_added_while_running_is_listed_loaded_and_unloaded(
    fresh: RunningSystem, repo: tuple[Path, dict[str, RepoModel]]
) -> None:
    served = fresh
    root, models = repo
    late = root / "late" / "1"
    late.mkdir(parents=True)
    shutil.copy(file_of(root, "halfnet"), late / "model.onnx")
    assert index(served)[("late", "1")] == ("UNAVAILABLE", "not loaded")

    loaded = served.post(f"{REPOSITORY}/models/late/load", {}, timeout_s=200.0)
    assert (loaded.status, loaded.body) == (200, {}), loaded.body
    assert index(served)[("late", "1")] == ("READY", "")
    want = reference(file_of(root, "halfnet"), models["halfnet"].inputs)
    assert_same(via_v1(served, "late", models["halfnet"]), want)

    # A new version in the folder: loading again serves it (the latest) in place of version 1.
    (root / "late" / "2").mkdir()
    shutil.copy(file_of(root, "thumbs"), root / "late" / "2" / "model.onnx")
    reloaded = served.post(f"{REPOSITORY}/models/late/load", {}, timeout_s=200.0)
    assert (reloaded.status, reloaded.body) == (200, {}), reloaded.body
    assert served.get("/v2/models/late").body["versions"] == ["2"]
    assert index(served)[("late", "1")] == ("UNAVAILABLE", "version_policy serves versions ['2']")
    want = reference(file_of(root, "thumbs"), models["thumbs"].inputs)
    assert_same(via_v1(served, "late", models["thumbs"]), want)

    unloaded = served.post(f"{REPOSITORY}/models/late/unload", {}, timeout_s=200.0)
    assert (unloaded.status, unloaded.body) == (200, {}), unloaded.body
    assert index(served)[("late", "2")] == ("UNAVAILABLE", "unloaded")
    gone = served.post("/v1/infer", {"model": "late", "inputs": {"x": [[0.0] * 6]}})
    assert gone.status == 404
