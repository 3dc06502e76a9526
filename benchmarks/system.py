"""`gpulet up` as a child process for benchmarks: start, wait for /readyz, stop with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from common.procs import die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.2


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@contextmanager
def gpulet_up(
    up_args: Sequence[str], env: Mapping[str, str], log_path: Path
) -> Iterator[tuple[str, int]]:
    """Yields (the router's base URL, the `gpulet up` pid) once /readyz says 200."""
    port = free_port()
    args = [sys.executable, "-m", "common.cli.main", "up", *up_args, "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gpulet up exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f}s; see {log_path}")
            try:
                if http_get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass  # router not listening yet
            time.sleep(POLL_INTERVAL_S)
        yield base, proc.pid
    finally:
        # SIGINT is `gpulet up`'s Ctrl-C: it stops router, agent (and its workers) and Redis.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            proc.wait()


def router_pid(up_pid: int) -> int:
    """The router child of a `gpulet up` (the process running `common.cli.main router`)."""
    import psutil

    for child in psutil.Process(up_pid).children(recursive=True):
        if "router" in child.cmdline():
            return int(child.pid)
    raise RuntimeError(f"no router process under pid {up_pid}")
