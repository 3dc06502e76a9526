"""Static checks of the container files: docker-compose.yml and the multi-stage Dockerfile.

No Docker engine is needed: `docker compose config -q` only parses and validates the file, and
runs only where the compose plugin is installed; the other checks read the files as text/YAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

pytestmark = pytest.mark.timeout(60)


def _compose_plugin_missing_reason() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "the docker client is not installed"
    try:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc!r}"
    if probe.returncode != 0:
        return "the docker compose plugin is not installed (`docker compose version` failed)"
    return None


def test_compose_config_is_valid() -> None:
    reason = _compose_plugin_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    docker = shutil.which("docker")
    assert docker is not None
    result = subprocess.run(
        [docker, "compose", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_services_and_wiring() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"redis", "router", "agent"} <= set(services)

    assert services["redis"]["image"].startswith("redis:")
    for name in ("router", "agent"):
        service = services[name]
        env = _environment(service)
        assert re.fullmatch(r"redis://redis:6379(/\d+)?", env["GPULET_REDIS_URL"]), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["build"]["target"] == "runtime", name

    agent_env = _environment(services["agent"])
    # The router must reach the agent by its compose service name, not by a bind address.
    assert (
        agent_env["GPULET_AGENT_ADVERTISE_URL"] == f"http://agent:{agent_env['GPULET_AGENT_PORT']}"
    )
    assert agent_env["GPULET_AGENT_HOST"] == "0.0.0.0"
    assert _environment(services["router"])["GPULET_ROUTER_HOST"] == "0.0.0.0"
    assert "8000:8000" in [str(p) for p in services["router"]["ports"]]


def test_dockerfile_builds_models_in_a_stage_the_runtime_copies_from() -> None:
    text = DOCKERFILE.read_text()
    assert "torch==2.13.0" in text
    assert "download.pytorch.org/whl/cpu" in text

    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert stages == ["models", "runtime"]
    models_stage, runtime_stage = re.split(r"^FROM\s.*\bAS\s+runtime\b.*$", text, flags=re.M)

    assert "gpulet models build" in models_stage
    assert ".[models]" in models_stage
    assert re.search(r"^COPY\s+--from=models\b.*\s/models\s+/models\s*$", runtime_stage, re.M)
    assert "GPULET_MODEL_DIR=/models" in runtime_stage
    assert "torch" not in re.sub(r"#.*", "", runtime_stage)
    assert re.search(r"^USER\s+(?!root\b)\S+", runtime_stage, re.M)
    assert re.search(r"^EXPOSE\s+8000\s+8100\s*$", runtime_stage, re.M)
