"""A fake `nvidia-cuda-mps-control` for tests: an executable put on PATH that behaves as the real
one does where the agent can see it. `-d` starts a detached daemon process that writes its pid
to `$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid` and a control.log in
`$CUDA_MPS_LOG_DIRECTORY`; run without arguments it reads commands from stdin (`quit` stops the
daemon, `get_server_list` answers) and fails like the real one when no daemon serves the pipe
directory. Every call is appended as JSON to $FAKE_MPS_CALLS with the environment it saw.
FAKE_MPS_FAIL=1 makes `-d` fail as a daemon without permission would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

SCRIPT = '''#!{python}
import json, os, signal, subprocess, sys, time
from pathlib import Path

pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
logs = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"))
pid_file = pipe / "nvidia-cuda-mps-control.pid"
seen = {{k: v for k, v in os.environ.items() if k.startswith("CUDA_")}}

def record(what):
    calls = os.environ.get("FAKE_MPS_CALLS")
    if calls:
        with open(calls, "a") as handle:
            handle.write(json.dumps({{"call": what, "env": seen, "pid": os.getpid()}}) + "\\n")

def daemon_pid():
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None

if sys.argv[1:] == ["-d"]:
    record("start")
    if os.environ.get("FAKE_MPS_FAIL"):
        print("Failed to start MPS control daemon: permission denied", file=sys.stderr)
        sys.exit(1)
    if daemon_pid() is not None:
        print("An instance of this daemon is already running", file=sys.stderr)
        sys.exit(1)
    subprocess.Popen([sys.executable, __file__, "--serve"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    sys.exit(0)

if sys.argv[1:] == ["--serve"]:
    def bye(*_):
        pid_file.unlink(missing_ok=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "control.log", "a") as log:
        log.write(f"Starting control daemon using socket {{pipe}}/control\\n")
    pid_file.write_text(str(os.getpid()))
    while True:
        signal.pause()

pid = daemon_pid()
if pid is None:
    print("Cannot find MPS control daemon process", file=sys.stderr)
    sys.exit(1)
for line in sys.stdin:
    command = line.strip()
    record(command)
    if command == "quit":
        os.kill(pid, signal.SIGTERM)
    elif command == "get_server_list":
        print("")
'''


def install_fake_mps_control(bin_dir: Path) -> Path:
    """Write the fake as `bin_dir/nvidia-cuda-mps-control`; put `bin_dir` first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "nvidia-cuda-mps-control"
    path.write_text(SCRIPT.format(python=sys.executable))
    path.chmod(0o755)
    return path


def calls(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A detached daemon is reaped by init; until then it shows as a zombie with no cmdline.
    with contextlib.suppress(OSError):
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    return False


def kill_daemon(pid_file: Path) -> None:
    """Teardown for a daemon a test started itself (by its recorded pid, never by name)."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
