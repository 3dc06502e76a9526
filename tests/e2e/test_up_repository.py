"""`gpulet up --model-repository DIR` as README's "Serve your own model" runs it: a model folder
in Triton's layout, the printed curl answers, Ctrl-C leaves nothing; models it cannot serve are
named before anything starts (a named one stops it, exit 2), the others are served."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import psutil
import pytest
import torch

from common.procs import free_port
from tests.e2e.test_up import read_lines, wait_for_line
from tests.support.repo_models import HalfNet, Pair, export, unsupported_op_model

pytestmark = pytest.mark.timeout(180)
READY_TIMEOUT_S = 120.0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    export(Pair(), (torch.ones(2, 4), torch.ones(2, 4, dtype=torch.int32)),
           root / "pair" / "1" / "model.onnx", ["a", "n"], ["total", "positive"])  # fmt: skip
    export(HalfNet(), (torch.zeros(2, 6, dtype=torch.float16),), root / "half" / "1" / "model.onnx",
           ["x"], ["y"])  # fmt: skip
    unsupported_op_model(root / "badop" / "1" / "model.onnx")
    (root / "empty").mkdir()
    return root


def up(folder: Path, tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    env["GPULET_MODEL_DIR"] = str(tmp_path / "cache" / "models")
    env["GPULET_PROFILE_BATCHES"] = "1,2"
    return subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "up", "--model-repository", str(folder),
         "--port", str(free_port()), *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_up_serves_the_folder_and_its_printed_example(folder: Path, tmp_path: Path) -> None:
    process = up(folder, tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        _, before = wait_for_line(lines, r"gpulet is ready at", READY_TIMEOUT_S)
        assert "model=badop left out: badop/1/model.onnx: ONNX Runtime cannot run it" in before
        assert "model=empty left out: empty/: no version folder" in before
        banner, _ = wait_for_line(lines, r"try:\s+curl", 10)
        family = psutil.Process(process.pid).children(recursive=True)
        result = subprocess.run(["bash", "-c", banner.split("try:", 1)[1].strip()],
                                capture_output=True, text=True, timeout=30, check=True)
        answer = orjson.loads(result.stdout)
        assert answer["model"] == "half" and len(answer["outputs"]["y"][0]) == 6, answer
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(("models", "said"), [
    ("badop", "model badop cannot be served: badop/1/model.onnx: ONNX Runtime cannot run it"),
    ("empty", "model empty cannot be served: empty/: no version folder"),
    ("nothere", "--models names nothere, which"),
])  # fmt: skip
def test_up_stops_on_a_named_model_it_cannot_serve(
    folder: Path, tmp_path: Path, models: str, said: str
) -> None:
    process = up(folder, tmp_path, "--models", models)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2, out
    assert said in out
