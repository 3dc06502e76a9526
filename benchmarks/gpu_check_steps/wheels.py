"""What the device machine lacks for gpulet, as wheels for its Python 3.12 (x86-64, manylinux),
downloaded into one folder that a device run carries; run by benchmarks/gpu_wheels.sh.

  1. the packages gpulet needs there: pyproject's dependencies (with their extras) and what
     tests/gpu adds (TEST_ROOTS), each with its requirements, markers judged for CPython 3.12
     on Linux x86-64, walked through the packages installed here (their versions are the
     ones the tests pass with);
  2. less DEVICE_HAS, what the device image already holds (its requirements are its own);
     plus ALSO_CARRY, device packages ours need newer than the image may have;
  3. `pip download --no-deps --only-binary=:all:` of each NAME==VERSION for cp312 manylinux;
  4. the folder's size with the repository's (what a run sends: tracked and untracked files
     git does not ignore), against the device's 64 MiB limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
CARRY_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on what one run sends
MIB = 2**20
# tests/gpu: pytest with the plugins pyproject's [tool.pytest] settings name (asyncio_mode,
# timeout), and psutil for tests/conftest.py's leak checks.
TEST_ROOTS = ("pytest", "pytest-asyncio", "pytest-timeout", "psutil")
# The device image's Python packages, as the device docs (KINDS.md, "Python packages already
# there") listed them, read 2026-11-17. Their versions are the image's.
DEVICE_LISTED = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp"""
DEVICE_HAS = frozenset(canonicalize_name(n) for n in DEVICE_LISTED.split())
# Device packages carried anyway: ours need a version newer than the image may hold.
ALSO_CARRY = {
    "typing-extensions": "pydantic needs >= 4.16.0 and the image's version is not listed; "
    "pure Python and backward compatible, so shadowing the image's is safe",
}
# A 64-bit Linux CPython 3.12, as the device's python3 (3.12.3) is.
TARGET: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
}  # fmt: skip
# pip matches each manylinux tag exactly: the ones wheels of these packages are built for.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")  # fmt: skip


def roots() -> list[Requirement]:
    """pyproject's dependencies and the test roots, as requirements."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in (*project["dependencies"], *TEST_ROOTS)]


def closure(wanted: Iterable[Requirement]) -> tuple[dict[str, str], list[str]]:
    """({name: version installed here} of every package needed and not on the device,
    [notes on requirements of ours that the device's own packages must meet])."""
    needed: dict[str, str] = {}
    notes: list[str] = []
    walked: set[tuple[str, frozenset[str]]] = set()  # a package reached again with new extras
    queue = [(r, "gpulet") for r in wanted]
    while queue:
        req, by = queue.pop()
        name = canonicalize_name(req.name)
        on_device = name in DEVICE_HAS and name not in ALSO_CARRY
        if on_device:
            if req.specifier:
                notes.append(f"{by} needs {name}{req.specifier} (the device's own version)")
            continue
        if (name, frozenset(req.extras)) in walked:
            continue
        walked.add((name, frozenset(req.extras)))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{by} needs {req} for Python 3.12, which is not installed here: "
                             "install it in this venv first") from None  # fmt: skip
        if req.specifier and not req.specifier.contains(Version(dist.version), prereleases=True):
            raise SystemExit(f"{by} needs {req}, but {dist.version} is installed here")
        needed[name] = dist.version
        for text in dist.requires or ():
            sub = Requirement(text)
            for extra in ("", *sorted(req.extras)):
                if sub.marker is None or sub.marker.evaluate({**TARGET, "extra": extra}):
                    queue.append((sub, name))
                    break
    return dict(sorted(needed.items())), sorted(set(notes))


def download(needed: dict[str, str], dest: Path) -> list[Path]:
    if dest.exists():
        shutil.rmtree(dest)  # exactly this set: two versions of one package stop the install
    dest.mkdir(parents=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "--dest", str(dest),
                    *(f"{n}=={v}" for n, v in needed.items())], check=True)  # fmt: skip
    wheels = sorted(dest.glob("*.whl"))
    got = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
    if got != set(needed) or len(wheels) != len(needed):
        raise SystemExit(f"wheels {sorted(w.name for w in wheels)} do not match {needed}")
    return wheels


def repository_bytes() -> int:
    """What a device run sends besides what it carries: tracked and untracked, not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            check=True).stdout.split(b"\0")  # fmt: skip
    paths = [REPO_ROOT / p.decode() for p in listed if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".device-wheels")
    parser.add_argument("--dry-run", action="store_true", help="list, download nothing")
    args = parser.parse_args()
    needed, notes = closure(roots())
    print(f"{len(needed)} packages the device lacks (versions as installed here):")
    for name, version in needed.items():
        print(f"  {name}=={version}" + (f"   (carried anyway: {ALSO_CARRY[name]})"
                                         if name in ALSO_CARRY else ""))  # fmt: skip
    print("requirements the device's own packages must meet (versions not all known):")
    print("".join(f"  {n}\n" for n in notes), end="")
    if args.dry_run:
        return 0
    wheels = download(needed, args.dest)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    repo = repository_bytes()
    total = wheel_bytes + repo
    print(f"{args.dest}: {len(wheels)} wheels, {wheel_bytes / MIB:.1f} MiB; repository "
          f"{repo / MIB:.1f} MiB; together {total / MIB:.1f} MiB of the "
          f"{CARRY_LIMIT_BYTES / MIB:.0f} MiB a device run may send")  # fmt: skip
    if total > CARRY_LIMIT_BYTES:
        print("TOO LARGE for one device run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
