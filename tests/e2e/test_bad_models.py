"""Bad repository models get clear answers, and nothing else breaks: each case is put in the
folder while the system runs, loaded (400 `bad_model` naming the file, and the field where there
is one), listed UNAVAILABLE with that reason, while another model answers requests throughout.

The system plans with the gpu-let scheduler (profiles measured at start), limits model files to
GPULET_MAX_MODEL_BYTES = 20 kB, and serves `ok` (float16 in and out, a few hundred bytes).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import running
from tests.support import http
from tests.support.repo_models import HalfNet, Thumbs, export, unsupported_op_model
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(300)
REPOSITORY = "/v2/repository"
MAX_MODEL_BYTES = 20_000
OK_BODY = {"model": "ok", "inputs": {"x": [[0.5] * 6]}, "slo_ms": 5000}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repository")
    export(HalfNet(), (torch.zeros(2, 6, dtype=torch.float16),), folder / "ok" / "1" / "model.onnx",
           ["x"], ["y"])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def served(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, root: Path
) -> Iterator[RunningSystem]:
    limit = {"GPULET_MAX_MODEL_BYTES": str(MAX_MODEL_BYTES), "GPULET_MODEL_REPOSITORY": str(root)}
    yield from running(
        redis_url, tmp_path_factory.mktemp("cache") / "models", models=("ok",),
        router_env=limit,
        agent_env={**limit, "GPULET_MODELS": "ok", "GPULET_PROFILE_BATCHES": "1,2"},
    )  # fmt: skip


@contextlib.contextmanager
def ok_keeps_serving(served: RunningSystem) -> Iterator[None]:
    """Requests to `ok` sent back to back meanwhile; every one must be answered 200."""
    stop = threading.Event()
    statuses: list[int] = []

    def send() -> None:
        while not stop.is_set():
            statuses.append(served.post("/v1/infer", OK_BODY).status)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=30)
    assert statuses and set(statuses) == {200}, statuses


def load(served: RunningSystem, name: str) -> http.Answer:
    return served.post(f"{REPOSITORY}/models/{name}/load", {}, timeout_s=200.0)


def reason_in_index(served: RunningSystem, name: str) -> str:
    rows = [r for r in served.post(f"{REPOSITORY}/index", {}).body if r["name"] == name]
    assert rows and {r["state"] for r in rows} == {"UNAVAILABLE"}, rows
    return str(rows[0]["reason"])


def model_file(root: Path, name: str) -> Path:
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_not_onnx(root: Path) -> None:
    model_file(root, "notonnx").write_text("these are not the weights you are looking for\n")


def write_truncated(root: Path) -> None:
    whole = root / ".whole.onnx"
    export(Thumbs(), (torch.zeros(2, 3, 8, 8, dtype=torch.uint8),), whole, ["pixels"], ["probs"])
    model_file(root, "truncated").write_bytes(whole.read_bytes()[:3000])


def write_bad_op(root: Path) -> None:
    unsupported_op_model(model_file(root, "badop"))


def write_mismatch(root: Path) -> None:
    shutil.copy(root / "ok" / "1" / "model.onnx", model_file(root, "mismatch"))
    (root / "mismatch" / "config.pbtxt").write_text(
        'max_batch_size: 4\ninput [{ name: "x", data_type: TYPE_INT32, dims: [6] }]\n'
        'output [{ name: "y", data_type: TYPE_FP16, dims: [6] }]\n')


def write_too_big(root: Path) -> None:
    export(torch.nn.Linear(100, 100), (torch.zeros(2, 100),), model_file(root, "toobig"), ["x"],
           ["y"])  # fmt: skip


def write_empty_version(root: Path) -> None:
    (root / "noversion" / "1").mkdir(parents=True)


CASES = [
    pytest.param(write_not_onnx, "notonnx", ["notonnx/1/model.onnx", "not an ONNX model"], None,
                 id="not-onnx"),
    pytest.param(write_truncated, "truncated", ["truncated/1/model.onnx", "truncated"], None,
                 id="truncated"),
    pytest.param(write_bad_op, "badop",
                 ["badop/1/model.onnx", "ONNX Runtime cannot run it", "NoSuchOperator"], None,
                 id="operator-onnx-runtime-lacks"),
    pytest.param(write_mismatch, "mismatch",
                 ["mismatch/config.pbtxt", "int32, but the graph's input is float16"],
                 "input 'x' data_type", id="config-disagrees-with-graph"),
    pytest.param(write_too_big, "toobig", ["toobig/1/model.onnx", "GPULET_MAX_MODEL_BYTES"], None,
                 id="larger-than-the-limit"),
    pytest.param(write_empty_version, "noversion", ["noversion/1/", "no model.onnx"], None,
                 id="version-folder-without-model"),
]  # fmt: skip


@pytest.mark.parametrize(("write", "name", "said", "field"), CASES)
def test_a_bad_model_is_refused_with_why_and_the_others_keep_serving(
    served: RunningSystem, root: Path, write: object, name: str, said: list[str],
    field: str | None,
) -> None:  # fmt: skip
    write(root)  # type: ignore[operator]
    with ok_keeps_serving(served):
        answer = load(served, name)
        assert answer.status == 400, answer.body
        assert answer.body["code"] == "bad_model"
        for words in said:
            assert words in answer.body["error"], answer.body
        assert answer.body["details"].get("field") == field
        reason = reason_in_index(served, name)
        for words in said[:2]:
            assert words in reason, reason
    assert served.post("/v1/infer", OK_BODY).status == 200


@pytest.mark.parametrize("path", ["a..b", "x/y", "..", "%2E%2E", "bad%2Fname", "v@2"])
def test_a_model_name_that_is_not_a_folder_name_is_refused(
    served: RunningSystem, root: Path, path: str
) -> None:
    shutil.copytree(root / "ok", root / "a..b", dirs_exist_ok=True)  # on disk, but not a name
    with ok_keeps_serving(served):
        # http.client sends the path as written: no client-side resolution of "..".
        connection = HTTPConnection("127.0.0.1", int(served.url.rsplit(":", 1)[1]))
        try:
            connection.request("POST", f"{REPOSITORY}/models/{path}/load", body=b"{}")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        assert response.status == 400, body
        assert "is not a model name" in body and "bad_model" in body
    assert "is not a model name" in reason_in_index(served, "a..b")
