"""The model cache's fingerprints and staleness checks, on fake files (no torch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.models import CATALOG
from common.modelzoo import cache

pytestmark = pytest.mark.timeout(30)


def _fake_build(model_dir: Path, name: str, fingerprint: str | None = None) -> None:
    cache.onnx_path(model_dir, name).write_bytes(b"not really onnx")
    sidecar = {"name": name, "fingerprint": fingerprint or cache.fingerprint(name)}
    cache.sidecar_path(model_dir, name).write_text(json.dumps(sidecar))


def test_paths_sit_side_by_side(tmp_path: Path) -> None:
    assert cache.onnx_path(tmp_path, "lenet") == tmp_path / "lenet.onnx"
    assert cache.sidecar_path(tmp_path, "lenet") == tmp_path / "lenet.json"


def test_fingerprint_is_stable_and_differs_per_name() -> None:
    prints = {name: cache.fingerprint(name) for name in CATALOG}
    assert prints == {name: cache.fingerprint(name) for name in CATALOG}
    assert len(set(prints.values())) == len(CATALOG)
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints.values())


def test_importing_cache_pulls_in_no_torch_or_onnxruntime() -> None:
    # A fresh interpreter: this one may already have torch loaded by other tests.
    probe = (
        "import sys, common.modelzoo.cache; "
        "print(sorted({'torch', 'onnxruntime', 'onnx'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_not_current_when_onnx_missing(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet")
    cache.onnx_path(tmp_path, "lenet").unlink()
    assert not cache.is_current(tmp_path, "lenet")


def test_not_current_when_sidecar_missing_or_corrupt(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet")
    cache.sidecar_path(tmp_path, "lenet").unlink()
    assert not cache.is_current(tmp_path, "lenet")
    cache.sidecar_path(tmp_path, "lenet").write_text("{not json")
    assert not cache.is_current(tmp_path, "lenet")
    cache.sidecar_path(tmp_path, "lenet").write_text("[1, 2]")
    assert not cache.is_current(tmp_path, "lenet")


def test_not_current_when_fingerprint_differs(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet", fingerprint="0" * 64)
    assert not cache.is_current(tmp_path, "lenet")


def test_current_when_fingerprint_matches(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet")
    assert cache.is_current(tmp_path, "lenet")


def test_sidecar_of_another_model_does_not_count(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet", fingerprint=cache.fingerprint("noop"))
    assert not cache.is_current(tmp_path, "lenet")


def test_missing_or_stale_keeps_the_given_order(tmp_path: Path) -> None:
    _fake_build(tmp_path, "lenet")
    _fake_build(tmp_path, "noop", fingerprint="stale")
    names = ["resnet50", "noop", "lenet", "bert_mini"]
    assert cache.missing_or_stale(tmp_path, names) == ["resnet50", "noop", "bert_mini"]
    assert cache.missing_or_stale(tmp_path, ["lenet"]) == []
    assert cache.missing_or_stale(tmp_path / "nowhere", ["lenet"]) == ["lenet"]


def test_write_sidecar_records_settings_and_is_current(tmp_path: Path) -> None:
    cache.onnx_path(tmp_path, "noop").write_bytes(b"x" * 7)
    path = cache.write_sidecar(tmp_path, "noop", {"bytes": 7})
    data = json.loads(path.read_text())
    assert data["name"] == "noop"
    assert data["seed"] == cache.MODEL_SEED
    assert data["opset"] == cache.OPSET
    assert data["bytes"] == 7
    assert cache.read_sidecar(tmp_path, "noop") == data
    assert cache.is_current(tmp_path, "noop")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert path.stat().st_mode & 0o777 == cache.FILE_MODE
