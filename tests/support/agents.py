"""Simulated agents as real `gpulet agent --simulated` processes, for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.procs import die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SimAgent:
    agent_id: str
    url: str
    process: subprocess.Popen[bytes]


def spawn_sim_agent(
    redis_url: str, key_prefix: str, devices: int, *, profile: str = "a100-class",
    agent_id: str | None = None, env: dict[str, str] | None = None,
) -> SimAgent:  # fmt: skip
    args = ["--simulated", profile, "--devices", str(devices)]
    return spawn_agent(redis_url, key_prefix, args, agent_id=agent_id, env=env)


def spawn_agent(
    redis_url: str, key_prefix: str, args: list[str], *, agent_id: str | None = None,
    env: dict[str, str] | None = None,
) -> SimAgent:  # fmt: skip
    """`gpulet agent ARGS` as a real process on a free port, in the repository root."""
    port = free_port()
    agent_id = agent_id or f"sim-agent-{port}"
    full_env = {
        **os.environ, "GPULET_REDIS_URL": redis_url, "GPULET_REDIS_PREFIX": key_prefix,
        "GPULET_AGENT_PORT": str(port), "GPULET_AGENT_ID": agent_id,
        "GPULET_HEARTBEAT_INTERVAL_S": "0.2", "GPULET_LOG_LEVEL": "WARNING", **(env or {}),
    }  # fmt: skip
    command = [sys.executable, "-m", "common.cli.main", "agent", *args]
    process = subprocess.Popen(
        command, env=full_env, cwd=REPO_ROOT, start_new_session=True, preexec_fn=die_with_parent
    )
    return SimAgent(agent_id, f"http://127.0.0.1:{port}", process)
