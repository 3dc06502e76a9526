"""A router and an agent as real processes on loopback, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from common.procs import die_with_parent, free_port, stop_process
from tests.support import http

T = TypeVar("T")
POLL_S = 0.05


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll an observable condition until it holds; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)  # polls a condition with a deadline; noqa: sleep-ok


@dataclass
class RunningSystem:
    redis_url: str
    prefix: str
    model_dir: Path
    models: tuple[str, ...]
    router_env: Mapping[str, str] = field(default_factory=dict)
    agent_env: Mapping[str, str] = field(default_factory=dict)
    with_agent: bool = True
    routers: int = 1  # routers sharing the cluster: "router", "router2", ...
    router_port: int = 0
    agent_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    router_ports: dict[str, int] = field(default_factory=dict)
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def urls(self) -> dict[str, str]:
        """Each router's URL by process name."""
        return {name: f"http://127.0.0.1:{port}" for name, port in self.router_ports.items()}

    def start(self) -> RunningSystem:
        base = {
            **os.environ,
            "GPULET_REDIS_URL": self.redis_url,
            "GPULET_REDIS_PREFIX": self.prefix,
            "GPULET_MODEL_DIR": str(self.model_dir),
            "GPULET_LOG_LEVEL": os.environ.get("GPULET_TEST_LOG_LEVEL", "WARNING"),
        }
        cli = [sys.executable, "-m", "common.cli.main"]
        if self.with_agent:
            self.agent_port = free_port()
            self._spawn("agent", [*cli, "agent"], {
                **base, "GPULET_AGENT_PORT": str(self.agent_port),
                "GPULET_AGENT_ID": f"agent-{self.agent_port}",
                "GPULET_HEARTBEAT_INTERVAL_S": "0.2", "GPULET_HEARTBEAT_TTL_S": "2",
                **self.agent_env,
            })  # fmt: skip
        self.base_env = base
        for index in range(self.routers):
            self.start_router("router" if index == 0 else f"router{index + 1}")
        return self

    def start_router(self, name: str = "router") -> None:
        """Start (or start again, on its port) the router called `name`."""
        port = self.router_ports.get(name) or (self.router_port if name == "router" else 0)
        port = port or free_port()
        self.router_ports[name] = port
        if name == "router":
            self.router_port = port
        cli = [sys.executable, "-m", "common.cli.main"]
        self._spawn(name, [*cli, "router"], {
            **self.base_env, "GPULET_ROUTER_PORT": str(port),
            "GPULET_MODELS": ",".join(self.models), "GPULET_RECONCILE_INTERVAL_S": "0.2",
            **self.router_env,
        })  # fmt: skip

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.processes[name] = subprocess.Popen(
            args, env=env, start_new_session=True, preexec_fn=die_with_parent
        )

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        def ready() -> bool:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} during start-up")
            try:
                return all(http.request("GET", url + "/readyz").status == 200
                           for url in self.urls.values())  # fmt: skip
            except OSError:
                return False

        wait_until(ready, timeout_s, "/readyz to answer 200 on every router")

    def get(self, path: str) -> http.Answer:
        return http.request("GET", self.url + path)

    def post(self, path: str, body: Any, timeout_s: float = 60.0) -> http.Answer:
        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        return http.request("POST", self.url + path, data, timeout_s=timeout_s)

    def start_agent(self, name: str, env: Mapping[str, str]) -> int:
        """Start one more agent (named `name`); returns its port."""
        port = free_port()
        cli = [sys.executable, "-m", "common.cli.main"]
        self._spawn(name, [*cli, "agent"], {
            **self.base_env, "GPULET_AGENT_PORT": str(port), "GPULET_AGENT_ID": f"{name}-{port}",
            "GPULET_HEARTBEAT_INTERVAL_S": "0.2", "GPULET_HEARTBEAT_TTL_S": "2", **env,
        })  # fmt: skip
        return port

    def stop(self) -> None:
        # Routers first: no new work reaches the agents.
        for name in [*self.router_ports, *sorted(set(self.processes) - set(self.router_ports))]:
            proc = self.processes.pop(name, None)
            if proc is not None:
                stop_process(proc, timeout_s=10.0)
