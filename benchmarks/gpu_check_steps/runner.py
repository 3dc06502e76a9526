"""What every step of gpu_check shares: its result, the context it runs in, and a subprocess
with a log file and a deadline that leaves nothing running behind it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
STOP_GRACE_S = 10.0  # after SIGTERM (or SIGINT), before SIGKILL
TAIL_LINES = 8


@dataclass
class StepResult:
    """One step's outcome: `reason` says why it failed or was skipped, or what it found."""

    name: str
    status: str  # OK | FAILED | SKIPPED
    reason: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)  # paths under the output folder

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "seconds": round(self.seconds, 1),
                "figures": self.figures, "logs": self.logs}  # fmt: skip


@dataclass(frozen=True)
class Context:
    """Where a step writes and what it runs under."""

    out: Path  # the output folder: summary and profile files
    logs: Path  # out/logs: everything else (packed into logs.tar.gz at the end)
    env: Mapping[str, str]  # the environment every step's processes get (fakes included)
    scratch: Path  # a short path for MPS pipe directories (unix socket paths stop at 108 B)
    fake: bool

    def mps_env(self, step: str) -> dict[str, str]:
        """A pipe and log directory of the step's own: a daemon one step leaves is found."""
        return {"GPULET_MPS_PIPE_DIR": str(self.scratch / step / "pipe"),
                "GPULET_MPS_LOG_DIR": str(self.scratch / step / "log")}  # fmt: skip

    def no_mps_env(self, step: str) -> dict[str, str]:
        """A pipe directory that cannot be made (under a plain file), so the agent or the
        profiler finds MPS unusable and time-slices: for a host whose daemon starts but serves
        no client, where gpulet itself would still trust the daemon."""
        blocker = self.scratch / step / "mps-off"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("gpu_check: MPS turned off for this step\n")
        return {"GPULET_MPS_PIPE_DIR": str(blocker / "pipe"),
                "GPULET_MPS_LOG_DIR": str(blocker / "log")}  # fmt: skip

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.out))


@dataclass(frozen=True)
class Finished:
    returncode: int | None  # None: killed at its deadline
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_logged(
    args: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    *,
    stdout: Path | None = None,
) -> Finished:
    """Run `args` from the repository root, output to `log` (stdout to `stdout` if given), in a
    process group of its own that is ended whole if it outlives `timeout_s`."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err, (stdout or log).open("ab") as out:
        proc = subprocess.Popen(list(args), cwd=REPO_ROOT, env=dict(env), stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        try:
            code: int | None = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            end_group(proc, signal.SIGTERM)
            code = None
    return Finished(code, time.monotonic() - started)


def end_group(proc: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """`first` to the process group, then SIGKILL to what is left after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a log, joined with ' | ' (for a reason line)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path.name})"
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or f"({path.name} is empty)"


def last_line_with(path: Path, marker: str) -> str | None:
    """The last line of a log that contains `marker`, stripped."""
    try:
        found = [line.strip() for line in path.read_text(errors="replace").splitlines()
                 if marker in line]  # fmt: skip
    except OSError:
        return None
    return found[-1] if found else None


def stop_left_daemon(ctx: Context, step: str) -> str | None:
    """Stop each MPS control daemon a step left in a pipe directory under its scratch folder
    (a step killed at its deadline cannot stop its own; tests/gpu's live there too, through
    --basetemp); by its recorded pid, never by name. Returns what it did, if anything."""
    from agent.nvidia.mps import PID_FILE, MpsDaemon, MpsState

    stopped = []
    for pid_file in sorted((ctx.scratch / step).rglob(PID_FILE)):
        daemon = MpsDaemon(pid_file.parent, pid_file.parent.parent / "log", (),
                           binary=_on_path("nvidia-cuda-mps-control", ctx.env))  # fmt: skip
        pid = daemon.running_pid()
        if pid is None:
            continue
        daemon.state = MpsState(True, True, pid, f"left running by step {step}")
        daemon.stop()
        stopped.append(f"pid {pid} in {pid_file.parent}")
    return f"stopped MPS daemons step {step} left: {', '.join(stopped)}" if stopped else None


def _on_path(binary: str, env: Mapping[str, str]) -> str:
    import shutil

    return shutil.which(binary, path=env.get("PATH")) or binary
