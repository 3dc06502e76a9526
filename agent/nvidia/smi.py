"""GPU facts from `nvidia-smi` when nvidia-ml-py is not installed.

A GPU host may have the driver (and so nvidia-smi, which reads NVML itself) but no package
registry to install nvidia-ml-py from. The parsing is pure; `run_smi` is the one call out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace

from agent.nvidia.nvml import GpuFacts, MigFacts, NvmlError

QUERY_FIELDS = "index,uuid,name,memory.total,compute_cap,mig.mode.current"
QUERY_ARGS = ("--query-gpu=" + QUERY_FIELDS, "--format=csv,noheader,nounits")
LIST_ARGS = ("-L",)
DRIVER_ARGS = ("--query-gpu=driver_version", "--format=csv,noheader")
SMI_TIMEOUT_S = 20.0
# nvidia-smi -L names MIG instances by profile ("3g.40gb"), not by share: the share is its
# compute slices over the GPU's. A100 and H100 have 7 slices; A30 has 4 (NVIDIA MIG user guide).
DEFAULT_MIG_SLICES = 7
MIG_SLICES_BY_NAME = {"A30": 4}

_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG (\d+)g\.(\d+)gb\s+Device\s+\d+: \(UUID: (MIG-[^)]+)\)")

Runner = Callable[[Sequence[str]], str]


def run_smi(args: Sequence[str]) -> str:
    """stdout of `nvidia-smi ARGS`; NvmlError when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise NvmlError("neither nvidia-ml-py nor nvidia-smi is available")
    try:
        done = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NvmlError(f"nvidia-smi failed: {exc}") from exc
    if done.returncode != 0:
        raise NvmlError(f"nvidia-smi {' '.join(args)} exited {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip()}")  # fmt: skip
    return done.stdout


def read_gpus_smi(run: Runner = run_smi) -> tuple[GpuFacts, ...]:
    """The GPUs and MIG instances nvidia-smi lists."""
    migs = parse_mig_list(run(LIST_ARGS))
    return tuple(_with_mig(gpu, migs.get(gpu.uuid, ())) for gpu in parse_gpu_query(run(QUERY_ARGS)))


def read_driver_smi(run: Runner = run_smi) -> str:
    """The driver version nvidia-smi reports (one row per GPU, all the same)."""
    rows = run(DRIVER_ARGS).split()
    if not rows:
        raise NvmlError("nvidia-smi reported no driver version")
    return rows[0]


def parse_gpu_query(text: str) -> list[GpuFacts]:
    """Rows of `nvidia-smi --query-gpu=QUERY_FIELDS --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != QUERY_FIELDS.count(",") + 1:
            raise NvmlError(f"unexpected nvidia-smi row {line!r}; expected {QUERY_FIELDS}")
        index, uuid, name, memory_mib, capability, mig_mode = parts
        major, _, minor = capability.partition(".")
        gpus.append(
            GpuFacts(
                index=int(index),
                uuid=uuid,
                name=name,
                memory_bytes=int(float(memory_mib)) * 2**20,
                compute_capability=(int(major), int(minor or 0)),
                mig_enabled=mig_mode.lower() == "enabled",
            )
        )
    return gpus


def parse_mig_list(text: str) -> dict[str, tuple[MigFacts, ...]]:
    """{GPU UUID: its MIG instances} from `nvidia-smi -L`."""
    found: dict[str, list[MigFacts]] = {}
    current: str | None = None
    name = ""
    for line in text.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu is not None:
            current, name = gpu.group(2), line
            found[current] = []
            continue
        mig = _MIG_LINE.match(line)
        if mig is not None and current is not None:
            slices = next((n for k, n in MIG_SLICES_BY_NAME.items() if k in name),
                          DEFAULT_MIG_SLICES)  # fmt: skip
            found[current].append(
                MigFacts(
                    uuid=mig.group(3),
                    profile=f"{mig.group(1)}g.{mig.group(2)}gb",
                    size_pct=round(100.0 * int(mig.group(1)) / slices, 3),
                    memory_bytes=int(mig.group(2)) * 2**30,
                )
            )
    return {uuid: tuple(migs) for uuid, migs in found.items()}


def _with_mig(gpu: GpuFacts, migs: tuple[MigFacts, ...]) -> GpuFacts:
    return replace(gpu, mig=migs) if gpu.mig_enabled else gpu
