"""`gpulet up` as a child process for end-to-end tests: started as a user starts it, waited for
until its ready banner, stopped with Ctrl-C (SIGINT) and checked to have exited cleanly."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from common.procs import free_port

READY_TIMEOUT_S = 120.0


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    port: int
    lines: queue.Queue[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_line(self, pattern: str, timeout_s: float) -> tuple[str, str]:
        """The first line matching `pattern`, and everything read up to it."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r} within {timeout_s:.0f}s; "
                                   f"read:\n{''.join(seen)[-3000:]}") from None  # fmt: skip
            seen.append(line)
            if re.search(pattern, line):
                return line, "".join(seen)


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without a Redis URL: `gpulet up` starts its own, as for a user."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    return {**env, **(extra or {})}


@contextmanager
def gpulet_up(
    args: Sequence[str], env: Mapping[str, str], *, ready: bool = True
) -> Iterator[UpProcess]:
    """`gpulet up ARGS --port P`; with `ready`, returns once it printed its ready banner. On the
    way out: SIGINT, exit 0 expected, nothing left behind (the caller's fixtures check)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "up", *args, "--port", str(port)],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    up = UpProcess(process, port, lines)
    try:
        if ready:
            up.wait_for_line(r"gpulet is ready at", READY_TIMEOUT_S)
        yield up
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)  # EOF once the process is gone
        process.stdout.close()
