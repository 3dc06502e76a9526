"""Building zoo models for real: torch export, ONNX Runtime outputs, the cache, the lock."""

from __future__ import annotations

import fcntl
import json
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.models import CATALOG
from common.modelzoo import build, cache
from common.modelzoo.build import build_missing
from common.modelzoo.nets import example_inputs, make_net

# The cheap models: together they build in a few seconds on one core.
FAST_MODELS = ["lenet", "noop", "bert_mini"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory holding FAST_MODELS, built once for this module; tests must not modify it."""
    model_dir = tmp_path_factory.mktemp("models")
    assert build_missing(model_dir, FAST_MODELS, progress=False) == FAST_MODELS
    return model_dir


def _session(model_dir: Path, name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(cache.onnx_path(model_dir, name)), options, providers=["CPUExecutionProvider"]
    )


def _run(session: ort.InferenceSession, name: str, inputs: Iterable[torch.Tensor]) -> np.ndarray:
    spec = CATALOG[name]
    feeds = {s.name: t.numpy() for s, t in zip(spec.inputs, inputs, strict=True)}
    (out,) = session.run([spec.outputs[0].name], feeds)
    assert isinstance(out, np.ndarray)
    return out


@pytest.mark.parametrize("name", FAST_MODELS)
@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_matches_torch(built_dir: Path, name: str, batch: int) -> None:
    net, _ = make_net(name, cache.MODEL_SEED)
    inputs = example_inputs(name, batch, seed=batch + 100)
    with torch.no_grad():
        expected = net(*inputs).numpy()
    got = _run(_session(built_dir, name), name, inputs)
    assert got.shape == (batch, *CATALOG[name].outputs[0].item_shape)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.isfinite(got).all()
    if name != "noop":  # noop's rows are its random inputs; the nets must not collapse
        assert np.ptp(got) > 0


@pytest.mark.parametrize("name", FAST_MODELS)
def test_onnx_signature_matches_catalog(built_dir: Path, name: str) -> None:
    session = _session(built_dir, name)
    spec = CATALOG[name]
    for args, specs in ((session.get_inputs(), spec.inputs), (session.get_outputs(), spec.outputs)):
        assert [a.name for a in args] == [s.name for s in specs]
        for arg, s in zip(args, specs, strict=True):
            assert arg.shape[0] == "batch"
            assert tuple(arg.shape[1:]) == s.item_shape


def test_noop_returns_its_input_exactly(built_dir: Path) -> None:
    x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    x[0, :3] = [np.inf, -0.0, 1e-38]
    (out,) = _session(built_dir, "noop").run(["output"], {"input": x})
    assert out.tobytes() == x.tobytes()


def test_sidecar_describes_the_build(built_dir: Path) -> None:
    for name in FAST_MODELS:
        sidecar = json.loads(cache.sidecar_path(built_dir, name).read_text())
        assert sidecar["name"] == name
        assert sidecar["fingerprint"] == cache.fingerprint(name)
        assert sidecar["seed"] == cache.MODEL_SEED
        assert sidecar["opset"] == cache.OPSET
        assert sidecar["bytes"] == cache.onnx_path(built_dir, name).stat().st_size
    leftovers = [p.name for p in built_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_second_build_builds_nothing(built_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in built_dir.glob("*.onnx")}
    assert build_missing(built_dir, FAST_MODELS, progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in built_dir.glob("*.onnx")} == before


def test_changed_fingerprint_rebuilds_only_that_model(tmp_path: Path) -> None:
    assert build_missing(tmp_path, ["noop", "lenet"], progress=False) == ["noop", "lenet"]
    sidecar = cache.sidecar_path(tmp_path, "lenet")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "fingerprint": "old"}))
    assert build_missing(tmp_path, ["noop", "lenet"], progress=False) == ["lenet"]
    assert cache.is_current(tmp_path, "lenet")


def test_force_rebuilds_everything_and_drops_repeats(tmp_path: Path) -> None:
    assert build_missing(tmp_path, ["noop"], progress=False) == ["noop"]
    assert build_missing(tmp_path, ["noop", "noop"], progress=False, force=True) == ["noop"]


def test_unknown_name_is_rejected_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resnet9000") as info:
        build_missing(tmp_path, ["noop", "resnet9000"], progress=False)
    assert all(name in str(info.value) for name in CATALOG)
    assert list(tmp_path.iterdir()) == []


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_missing(tmp_path, ["noop"], progress=True)
    captured = capsys.readouterr()
    assert "noop" in captured.err
    assert captured.out == ""


def test_missing_torch_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import torch` fail; drop our modules so they import afresh.
    monkeypatch.setitem(sys.modules, "torch", None)
    for module in ("common.modelzoo.export", "common.modelzoo.nets"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[models\]'.*torch==2\.13\.0"):
        build_missing(tmp_path, ["noop"], progress=False)


def test_waiting_builder_rechecks_after_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A builder that found noop missing, then waited on the lock, must not build it again."""
    first_check_done = threading.Event()
    real_check = cache.missing_or_stale

    def check(model_dir: Path, names: Iterable[str]) -> list[str]:
        result = real_check(model_dir, names)
        first_check_done.set()
        return result

    monkeypatch.setattr(build, "missing_or_stale", check)
    with (tmp_path / build.LOCK_NAME).open("a") as lock, ThreadPoolExecutor(1) as pool:
        fcntl.flock(lock, fcntl.LOCK_EX)  # we play the other process, mid-build
        waiting = pool.submit(build_missing, tmp_path, ["noop"], progress=False)
        assert first_check_done.wait(timeout=60)
        from common.modelzoo.export import export_model

        export_model(tmp_path, "noop")
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert waiting.result(timeout=60) == []
    assert cache.is_current(tmp_path, "noop")
