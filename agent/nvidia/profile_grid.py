"""What a GPU profile measures and how it is written (pure): the grid of models x batches x MPS
sizes, the co-located pairs for the interference fit, the store key, and the common/data/profiles
files (NAME.toml, NAME.csv, NAME-interference.csv; format: common/data/profiles/README.md).

Used by agent.nvidia.profile_run (the measuring processes) and agent.nvidia.profile_cli.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.nvidia.nvml import GpuFacts
from agent.profiling.plan import BATCHES, RunBudget
from common.models import CATALOG
from common.profiles import DeviceProfile

GPU_KEY = "nvidia:"
# Splits of one GPU between two co-located gpu-lets: the original's layouts (80,20), (60,40),
# (50,50) (reference/gpulet-paper.md section 1.3).
PAIR_SPLITS = ((50.0, 50.0), (60.0, 40.0), (80.0, 20.0))
PAIR_BATCHES = (1, 8, 32)
DEFAULT_PAIRS = 6
PAIR_SEED = 0


@dataclass(frozen=True, order=True)
class PairPoint:
    """Two models co-located on one GPU, each at its batch and MPS share."""

    model_a: str
    batch_a: int
    size_a: float
    model_b: str
    batch_b: int
    size_b: float


@dataclass(frozen=True)
class PairResult:
    pair: PairPoint
    latency_a_ms: float
    latency_b_ms: float
    std_a_ms: float
    std_b_ms: float


@dataclass(frozen=True)
class GpuProfileRequest:
    models: tuple[str, ...]
    sizes: tuple[float, ...]  # MPS active thread percentages
    batches: tuple[int, ...] = BATCHES
    pairs: tuple[PairPoint, ...] = ()
    budget: RunBudget = field(default_factory=RunBudget)

    @property
    def total_points(self) -> int:
        return len(self.models) * len(self.sizes) * len(self.batches)


def plan_gpu_request(
    models: Iterable[str],
    sizes: Iterable[float],
    batches: Iterable[int] = BATCHES,
    pair_count: int = DEFAULT_PAIRS,
    seed: int = PAIR_SEED,
    budget: RunBudget | None = None,
) -> GpuProfileRequest:
    names = tuple(dict.fromkeys(models))
    unknown = [m for m in names if m not in CATALOG]
    if unknown or not names:
        raise ValueError(f"models {unknown or '(none)'} not in the catalog {sorted(CATALOG)}")
    wanted = tuple(sorted(set(sizes)))
    if not wanted or not all(0 < s <= 100 for s in wanted):
        raise ValueError(f"sizes {list(wanted)} must be percentages in (0, 100]")
    batch_list = tuple(sorted(set(batches)))
    if not batch_list or batch_list[0] < 1:
        raise ValueError(f"batches {list(batch_list)} must be >= 1")
    pairs = pair_grid(names, wanted, batch_list, pair_count, seed)
    return GpuProfileRequest(names, wanted, batch_list, pairs, budget or RunBudget())


def pair_grid(
    models: Sequence[str],
    sizes: Sequence[float],
    batches: Sequence[int],
    count: int,
    seed: int = PAIR_SEED,
) -> tuple[PairPoint, ...]:
    """`count` co-located pairs drawn (seeded) from every model pair (a model beside itself
    too) x split x batch. Only splits whose both sides are profiled sizes, and batches that
    are profiled, qualify: the fit divides each pair latency by the solo one at that point."""
    splits = [s for s in PAIR_SPLITS if s[0] in sizes and s[1] in sizes]
    pair_batches = [b for b in PAIR_BATCHES if b in batches] or [batches[0]]
    every = [
        PairPoint(a, ba, sa, b, bb, sb)
        for a, b in itertools.combinations_with_replacement(models, 2)
        for sa, sb in splits
        for ba, bb in itertools.product(pair_batches, repeat=2)
    ]
    if count <= 0 or not every:
        return ()
    return tuple(sorted(random.Random(seed).sample(every, min(count, len(every)))))


def gpu_profile_key(gpu: GpuFacts, engine: str) -> str:
    """The store key of a profile measured on this kind of GPU with this engine: equal keys,
    reusable profile (the CPU's key hashes its machine facts the same way)."""
    facts = {"name": gpu.name, "memory_bytes": gpu.memory_bytes,
             "compute_capability": list(gpu.compute_capability), "engine": engine}  # fmt: skip
    return GPU_KEY + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def default_name(gpu: GpuFacts) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"


def assemble_profile(
    name: str,
    gpu: GpuFacts,
    sizes: Sequence[float],
    points: Mapping[tuple[str, float], tuple[tuple[int, float], ...]],
    source: str,
) -> DeviceProfile:
    return DeviceProfile(
        name=name,
        kind="nvidia",
        sizes=tuple(sorted(sizes)),
        full_size=100.0,
        memory_mb=gpu.memory_bytes / 2**20,
        latency_points={k: tuple(sorted(v)) for k, v in sorted(points.items())},
        source=source,
    )


@dataclass(frozen=True)
class Provenance:
    """Where a measured profile comes from, written at the head of each of its files."""

    command: str  # exactly as typed
    engine: str  # "torch-cuda" | "onnxruntime-cuda"
    driver: str  # the NVIDIA driver's version, or why it is unknown
    measured_at: str  # ISO 8601, UTC
    sharing: str  # "MPS", or "time-sliced (whole GPU; MPS unusable: ...)"


def shared_files(
    profile: DeviceProfile,
    pairs: Sequence[PairResult],
    gpu: GpuFacts,
    provenance: Provenance,
) -> dict[str, str]:
    """{file name: text} of the profile in the common/data/profiles format."""
    name = profile.name
    about = (f"# Measured on {gpu.name} ({gpu.uuid}, compute capability "
             f"{gpu.compute_capability_text}), driver {provenance.driver}, engine "
             f"{provenance.engine}, FP32, partitions by {provenance.sharing}, at "
             f"{provenance.measured_at}.\n"
             f"# Command: {provenance.command}\n")  # fmt: skip
    toml = (
        f"# Device description for the measured profile {name}.csv (see README.md).\n{about}"
        f'name = "{name}"\nvendor = "nvidia"\n'
        f'compute_capability = "{gpu.compute_capability_text}"\n'
        f"sizes_pct = [{', '.join(f'{s:g}' for s in profile.sizes)}]\n"
        f"memory_mb = {profile.memory_mb:.0f}\n"
        f'latency = "{name}.csv"\n'
    )
    latency = [
        "# Solo latency of one batch on a partition of size_pct % of the GPU (under MPS: "
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE), median of the timed runs after warm-up.\n",
        about,
        "model,batch,size_pct,latency_ms\n",
    ]
    for (model, size), batch_points in sorted(profile.latency_points.items()):
        latency += [f"{model},{b},{size:g},{ms:.4f}\n" for b, ms in batch_points]
    files = {f"{name}.toml": toml, f"{name}.csv": "".join(latency)}
    if pairs:
        files[f"{name}.toml"] += f'interference = "{name}-interference.csv"\n'
        rows = [
            "# Two models co-running on one GPU under MPS: model1 at th1 %, model2 at th2 %; "
            "median latency per batch over a window both ran through, and its std dev (ms).\n",
            about,
            "model1,model2,batch1,batch2,th1_pct,th2_pct,lat1_ms,lat2_ms,std1_ms,std2_ms\n",
        ]
        for r in pairs:
            p = r.pair
            rows.append(f"{p.model_a},{p.model_b},{p.batch_a},{p.batch_b},{p.size_a:g},"
                        f"{p.size_b:g},{r.latency_a_ms:.4f},{r.latency_b_ms:.4f},"
                        f"{r.std_a_ms:.4f},{r.std_b_ms:.4f}\n")  # fmt: skip
        files[f"{name}-interference.csv"] = "".join(rows)
    return files


def write_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in files.items():
        path = folder / filename
        path.write_text(text)
        written.append(path)
    return written
