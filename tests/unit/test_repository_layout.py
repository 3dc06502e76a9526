"""Reading a repository folder in Triton's layout: names, versions and their policy, files by
sha256, and each problem as the index shows it (file and field named); the router's view on top
(what it lists, which names it refuses, what it publishes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from common.repository.config import ModelProblem
from common.repository.layout import RepositoryFolder, check_name
from tests.support.onnx_files import onnx_bytes

pytestmark = pytest.mark.timeout(30)
FLOAT = TensorProto.FLOAT


def model(root: Path, name: str, version: str = "1", *, width: int = 4,
          file: str = "model.onnx") -> Path:  # fmt: skip
    path = root / name / version / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes([("x", FLOAT, ["b", width])], [("y", FLOAT, ["b", width])]))
    return path


def test_versions_are_served_by_policy_latest_under_the_models_name(tmp_path: Path) -> None:
    for version, width in (("1", 2), ("2", 3), ("10", 4)):
        model(tmp_path, "m", version, width=width)
    (tmp_path / "m" / "notes").mkdir()  # not a version folder: ignored
    folder = RepositoryFolder(tmp_path, 10**6)
    latest = folder.scan("m")
    assert latest.problem is None and latest.versions == ("1", "2", "10")
    assert [(f.served_name, f.version, f.spec.inputs[0].shape) for f in latest.files] == [
        ("m", "10", (-1, 4))]  # fmt: skip
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 2 } }")
    two = folder.scan("m")
    assert [(f.served_name, f.relpath) for f in two.files] == [
        ("m@2", "m/2/model.onnx"), ("m", "m/10/model.onnx")]  # fmt: skip
    assert two.not_served_reason("1") == "version_policy serves versions ['2', '10']"


def test_files_are_named_by_sha256_and_read_again_when_they_change(tmp_path: Path) -> None:
    path = model(tmp_path, "m")
    folder = RepositoryFolder(tmp_path, 10**6)
    first = folder.scan("m").files[0]
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.size_bytes == path.stat().st_size
    model(tmp_path, "m", width=9)
    assert folder.scan("m").files[0].spec.inputs[0].shape == (-1, 9)


def test_default_model_filename_names_the_file(tmp_path: Path) -> None:
    model(tmp_path, "m", file="net.onnx")
    (tmp_path / "m" / "config.pbtxt").write_text('default_model_filename: "net.onnx"')
    assert RepositoryFolder(tmp_path, 10**6).scan("m").files[0].relpath == "m/1/net.onnx"


@pytest.mark.parametrize(("arrange", "problem"), [
    (lambda r: (r / "m").mkdir(), "m/: no version folder: put the model at m/1/model.onnx"),
    (lambda r: (r / "m" / "1").mkdir(parents=True), "m/1/: no model.onnx in the version folder"),
    (lambda r: model(r, "m").write_bytes(b"nope"), "m/1/model.onnx: not an ONNX model"),
    (lambda r: model(r, "m").write_bytes(b""), "m/1/model.onnx: an empty file"),
    (lambda r: (model(r, "m"), (r / "m" / "config.pbtxt").write_text(
        "version_policy: { specific: { versions: [7] } }")),
     "m/config.pbtxt: version_policy: specific [7] matches none of the version folders [1]"),
    (lambda r: (model(r, "m"), (r / "m" / "gpulet.toml").write_text("slo_ms = -1")),
     "m/gpulet.toml: slo_ms: -1: a number > 0"),
])  # fmt: skip
def test_each_problem_names_its_file(tmp_path: Path, arrange: object, problem: str) -> None:
    arrange(tmp_path)  # type: ignore[operator]
    found = RepositoryFolder(tmp_path, 10**6).scan("m")
    assert found.files == () and found.problem is not None
    assert str(found.problem).startswith(problem), str(found.problem)


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    size = model(tmp_path, "m").stat().st_size
    found = RepositoryFolder(tmp_path, size - 1).scan("m")
    assert str(found.problem) == (f"m/1/model.onnx: {size} bytes, more than "
                                  f"GPULET_MAX_MODEL_BYTES ({size - 1})")  # fmt: skip


@pytest.mark.parametrize("name", ["..", "a..b", "a/b", ".hidden", "m@2", "sp ace", "", "x" * 129])
def test_names_that_cannot_be_a_model_folder_are_refused(name: str) -> None:
    with pytest.raises(ModelProblem, match="is not a model name"):
        check_name(name)


@pytest.mark.parametrize("name", ["resnet50", "My-Net_2", "v1.2", "9"])
def test_ordinary_names_are_accepted(name: str) -> None:
    check_name(name)


def test_the_folder_lists_bad_names_too_and_hides_dot_folders(tmp_path: Path) -> None:
    model(tmp_path, "good")
    model(tmp_path, "a..b")
    (tmp_path / ".git").mkdir()
    folder = RepositoryFolder(tmp_path, 10**6)
    assert folder.names() == ["a..b", "good"]
    scans = {m.name: m for m in folder.scan_all()}
    assert scans["good"].problem is None
    assert "is not a model name" in str(scans["a..b"].problem)
    assert folder.has("good") and not folder.has("a..b") and not folder.has("absent")


def test_unsupported_element_types_are_named(tmp_path: Path) -> None:
    made = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])], "g",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["b"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["b"])],
    )  # fmt: skip
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(helper.make_model(made).SerializeToString())
    assert "input 's' is STRING" in str(RepositoryFolder(tmp_path, 10**6).scan("m").problem)
