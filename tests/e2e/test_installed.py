"""The package works outside this checkout: a non-editable install of a copy of the checkout, run
from another working directory, finds its shipped profiles and scenarios and serves.

The copy holds what a user's clone holds (the checkout without what .gitignore leaves out), in a
folder with nothing beside it. It is installed with `pip install --no-deps --target` (its
dependencies are this environment's), and every process below imports gpulet from that install,
never from here.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from common.procs import free_port
from tests.e2e.test_up import read_lines, wait_for_line

pytestmark = pytest.mark.timeout(240)
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0


# What a clone does not hold: .gitignore's entries and git's own folder (a build here must not
# leak into the copy; .ci/run's copy has no .git, a worktree's .git is a file).
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "*.onnx", "*.onnx.data",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site-packages of a non-editable install of a bare copy of this checkout."""
    root = tmp_path_factory.mktemp("installed")
    clone = root / "alone" / "gpulet"  # nothing beside it
    shutil.copytree(REPO_ROOT, clone, ignore=NOT_IN_A_CLONE)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(clone)],
        check=True, timeout=180, cwd=root,
    )  # fmt: skip
    shutil.rmtree(clone.parent)  # the install must not lean on its source
    return site


def _env(site: Path, tmp: Path) -> dict[str, str]:
    drop = ("REDIS_URL", "GPULET_REDIS_URL", "GPULET_PROFILES_DIR", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(site)  # ahead of this environment's editable install
    env["GPULET_MODEL_DIR"] = str(tmp / "models")
    return env


def test_the_install_finds_its_own_data(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import common, orjson\n"
        "from common.profiles import find_profile\n"
        "from common.scenarios import load_scenario\n"
        "from common.interference_models import fitted_for\n"
        "profile = find_profile('a100-class')\n"
        "scenario = load_scenario(__import__('pathlib').Path('a100-scen3'))\n"
        "print(orjson.dumps({'module': common.__file__, 'profile': profile.source,\n"
        "    'scenario': str(scenario.path), 'models': [m.name for m in scenario.models],\n"
        "    'interference': fitted_for('a100-class', profile) is not None}).decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                          env=_env(installed, tmp_path), capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    found = orjson.loads(done.stdout)
    for key in ("module", "profile", "scenario"):
        assert Path(found[key]).is_relative_to(installed), (key, found[key])
    assert found["models"] == ["resnet50", "vgg16", "mobilenet_v2"]
    assert found["interference"] is True


def test_the_install_serves_simulated_gpus_from_elsewhere(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "common.cli.main", "up", "--simulated", "a100-class", "--devices",
         "2", "--models", "resnet50,vgg16", "--port", str(port)],
        cwd=tmp_path, env=_env(installed, tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(up.stdout, lines), daemon=True)
    reader.start()
    try:
        wait_for_line(lines, r"gpulet is ready at", READY_TIMEOUT_S)
        body = orjson.dumps({"model": "vgg16", "inputs": {"input": [[1.0]]}, "slo_ms": 5000})
        answer = subprocess.run(
            ["curl", "-s", f"http://127.0.0.1:{port}/v1/infer", "-d", body],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        result = orjson.loads(answer.stdout)
        assert result["model"] == "vgg16" and result["simulated"] is True, result
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        reader.join(timeout=10)
        if up.stdout is not None:
            up.stdout.close()
