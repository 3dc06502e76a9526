"""`gpulet up` as a new user runs it: ready banner, the printed curl works, Ctrl-C cleans up."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import psutil
import pytest

from common.procs import free_port

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
        assert answer["model"] == "noop"
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
