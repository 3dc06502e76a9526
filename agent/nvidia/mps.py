"""The MPS control daemon the agent's GPU gpulets connect to: found running, or started and later
stopped by us, never someone else's.

One daemon serves every non-MIG GPU the agent uses (its CUDA_VISIBLE_DEVICES names them by
UUID, so clients naming a UUID see the same device; NVIDIA's MPS guide recommends UUIDs for
this). It lives in its own pipe and log directories, so it neither joins nor disturbs a daemon
in the default /tmp/nvidia-mps unless the admin points GPULET_MPS_PIPE_DIR there. The daemon
writes `nvidia-cuda-mps-control.pid` into its pipe directory: that file says whether one runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CONTROL_BINARY = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
CONTROL_LOG = "control.log"
COMMAND_TIMEOUT_S = 10.0  # one control command (start with -d, or quit)
START_TIMEOUT_S = 10.0  # `-d` returns at once; the daemon writes its pid file just after
STOP_TIMEOUT_S = 10.0  # `quit` waits for the servers' clients, which the agent stopped first
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class MpsState:
    """Whether gpulets can use MPS, and why (said in /v1/cluster and the log)."""

    usable: bool
    started_by_us: bool
    pid: int | None
    reason: str


class MpsDaemon:
    def __init__(
        self,
        pipe_dir: Path,
        log_dir: Path,
        visible_devices: Sequence[str],
        *,
        binary: str = CONTROL_BINARY,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pipe_dir = pipe_dir
        self.log_dir = log_dir
        self.visible_devices = tuple(visible_devices)
        self.binary = binary
        self.clock = clock
        self.pause = pause
        self.state = MpsState(False, False, None, "not started")

    def env(self) -> dict[str, str]:
        """What the daemon and its clients must share: the pipe (and log) directory."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
        }

    def running_pid(self) -> int | None:
        """The pid of a control daemon serving our pipe directory, if one is alive."""
        try:
            pid = int((self.pipe_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_control_daemon(pid) else None

    def ensure(self) -> MpsState:
        """Use the daemon running in our pipe directory, else start one; never raises."""
        self.state = self._ensure()
        log = logger.info if self.state.usable else logger.warning
        log("MPS %s", self.state.reason)
        return self.state

    def _ensure(self) -> MpsState:
        binary = shutil.which(self.binary)
        if binary is None:
            return MpsState(False, False, None, f"unusable: no {self.binary} on PATH (it comes "
                            "with the NVIDIA driver's compute utilities)")  # fmt: skip
        pid = self.running_pid()
        if pid is not None:
            return MpsState(True, False, pid, f"daemon pid {pid} already serves {self.pipe_dir}; "
                            "not ours, so left running at exit")  # fmt: skip
        try:
            self.pipe_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return MpsState(False, False, None, f"unusable: cannot create its directories: {exc}")
        env = {**os.environ, **self.env(), "CUDA_VISIBLE_DEVICES": ",".join(self.visible_devices)}
        try:
            done = subprocess.run([binary, "-d"], env=env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return MpsState(False, False, None, f"unusable: {self.binary} -d failed: {exc}")
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip() or self._log_tail()
            return MpsState(False, False, None, f"unusable: {self.binary} -d exited "
                            f"{done.returncode}: {said}")  # fmt: skip
        pid = (
            self.running_pid()
            if self._wait_for(lambda: self.running_pid() is not None, START_TIMEOUT_S)
            else None
        )
        if pid is None:
            return MpsState(False, False, None, f"unusable: the daemon wrote no live pid to "
                            f"{self.pipe_dir / PID_FILE} within {START_TIMEOUT_S:.0f}s; "
                            f"{self._log_tail()}")  # fmt: skip
        return MpsState(True, True, pid, f"daemon pid {pid} started by this agent for "
                        f"{','.join(self.visible_devices)} in {self.pipe_dir}")  # fmt: skip

    def stop(self) -> None:
        """Stop the daemon if we started it (`quit`, then SIGTERM if it lingers)."""
        state = self.state
        if not state.started_by_us or state.pid is None:
            if state.usable:
                logger.info("MPS daemon pid %s left running (not ours)", state.pid)
            return
        binary = shutil.which(self.binary) or self.binary
        try:
            subprocess.run([binary], input="quit\n", env={**os.environ, **self.env()},
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                           check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("MPS quit failed: %s", exc)
        pid = state.pid
        if not self._wait_for(lambda: not _is_control_daemon(pid), STOP_TIMEOUT_S):
            logger.warning("MPS daemon pid %s ignored quit for %.0fs; SIGTERM", pid,
                           STOP_TIMEOUT_S)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.state = MpsState(False, False, None, "stopped")
        logger.info("MPS daemon pid %s stopped", pid)

    def _wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Poll `done` until it holds (True) or `timeout_s` passes (False)."""
        deadline = self.clock() + timeout_s
        while not done():
            if self.clock() >= deadline:
                return False
            self.pause(POLL_INTERVAL_S)
        return True

    def _log_tail(self) -> str:
        try:
            lines = (self.log_dir / CONTROL_LOG).read_text().strip().splitlines()
        except OSError:
            return f"no {CONTROL_LOG} in {self.log_dir}"
        return " | ".join(lines[-LOG_TAIL_LINES:])


def _is_control_daemon(pid: int) -> bool:
    """Whether `pid` is alive and is an MPS control daemon (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's: trust the pid file
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if not cmdline:  # a zombie: exited, not yet reaped
        return False
    return CONTROL_BINARY.encode() in cmdline
