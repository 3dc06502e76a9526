"""`gpulet up` as a new user runs it: ready banner, the printed curl works, Ctrl-C cleans up."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest

from common.procs import free_port
from tests.support import http
from tests.support.up import gpulet_up

pytestmark = pytest.mark.timeout(180)
READY_TIMEOUT_S = 120.0


def read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        lines.put(line)


def wait_for_line(lines: queue.Queue[str], pattern: str, timeout_s: float) -> tuple[str, str]:
    """The first line matching `pattern`, and everything read up to it."""
    seen = []
    while True:
        line = lines.get(timeout=timeout_s)
        seen.append(line)
        if re.search(pattern, line):
            return line, "".join(seen)


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="needs curl to run the example")
def test_up_serves_the_printed_example_and_ctrl_c_leaves_nothing(model_dir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    env["GPULET_MODEL_DIR"] = str(model_dir)
    up = subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "up", "--port", str(port),
         "--models", "noop,lenet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(up.stdout, lines), daemon=True)
    reader.start()
    try:
        wait_for_line(lines, r"gpulet is ready at", READY_TIMEOUT_S)
        curl_line, _ = wait_for_line(lines, r"try:\s+curl", 10)
        family = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "agent" in names and "router" in names
        assert any("server" in p.name() for p in family), "up started its own Redis"

        command = curl_line.split("try:", 1)[1].strip()
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
        )
        answer = orjson.loads(result.stdout)
        assert answer.get("model") == "noop", answer
        assert answer["outputs"]["output"] == [[1.0] * 16]

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        wait_for_line(lines, r"gpulet stopped", 10)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"left running: {[p.pid for p in alive]}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        reader.join(timeout=10)  # EOF once the process is gone
        if up.stdout is not None:
            up.stdout.close()


def broken_noop(path: Path) -> None:
    """An ONNX file with noop's signature that loads but fails on every run: its Reshape to
    [-1, 7] cannot hold 16 values (a worker that cannot run its model, on purpose)."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["output"])],
        "broken_noop",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def with_broken_noop(model_dir: Path, tmp_path: Path) -> dict[str, str]:
    """`gpulet up`'s environment over a model folder whose noop cannot run and lenet can."""
    from common.modelzoo.cache import onnx_path, sidecar_path

    broken_dir = tmp_path / "models"
    broken_dir.mkdir()
    for name in ("noop", "lenet"):  # current sidecars: nothing is rebuilt over the broken file
        shutil.copy(sidecar_path(model_dir, name), sidecar_path(broken_dir, name))
    shutil.copy(onnx_path(model_dir, "lenet"), onnx_path(broken_dir, "lenet"))
    broken_noop(onnx_path(broken_dir, "noop"))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    env["GPULET_MODEL_DIR"] = str(broken_dir)
    return env


def test_up_exits_non_zero_naming_the_model_whose_warm_up_fails(
    model_dir: Path, tmp_path: Path
) -> None:
    env = with_broken_noop(model_dir, tmp_path)
    up = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "up", "--port", str(free_port()),
         "--models", "noop,lenet", "--no-build"],
        env=env, capture_output=True, text=True, timeout=READY_TIMEOUT_S,
    )  # fmt: skip
    assert up.returncode == 1, up.stderr[-2000:]
    assert "gpulet is ready" not in up.stdout
    failed = [line for line in up.stderr.splitlines() if line.startswith("gpulet: model ")]
    assert len(failed) == 1 and failed[0].startswith("gpulet: model noop failed"), failed
    assert "not ready" in up.stderr and "gpulet stopped" in up.stderr


def test_up_keep_going_serves_the_models_that_work_and_says_which_failed(
    model_dir: Path, tmp_path: Path
) -> None:
    args = ["--models", "noop,lenet", "--no-build", "--keep-going"]
    with gpulet_up(args, with_broken_noop(model_dir, tmp_path), ready=False) as up:
        ready, seen = up.wait_for_line(r"gpulet is ready at", READY_TIMEOUT_S)
        assert "(models: lenet)" in ready
        assert "gpulet: model noop failed" in seen and "serves lenet only" in seen
        image = np.zeros((1, 1, 28, 28), np.float32).tolist()
        body = orjson.dumps({"model": "lenet", "inputs": {"input": image}})
        answer = http.request("POST", f"{up.url}/v1/infer", body)
        assert answer.status == 200, answer.body
