"""Device profiles: measured latency (and utilisation) per model, batch and partition size.

A profile is a table of facts; `latency_ms(model, batch, size)` reads it and interpolates:
    1. in batch: linearly between the two nearest measured batches at that size (latency grows
       close to linearly with batch between measured points on every profile we hold);
    2. in size: when `size` itself was not measured, linearly between the two nearest measured
       sizes, each first interpolated in batch.
Outside the measured range it raises `ProfileGap` (never a silent extrapolation); callers decide.
Sources: the measured GPU profiles shipped with the package (common/data/profiles: NAME.toml +
CSVs, copied from the project's reference profiles with their provenance headers) and the
profiles agents measure (JSON in Redis).
"""

from __future__ import annotations

import bisect
import csv
import functools
import os
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The original sized a gpu-let process at 1230 MB plus its models (reference/gpulet-paper.md
# section 7); without a per-model figure we assume this much per model, and say so.
DEFAULT_MODEL_MEMORY_MB = 1500.0
PROCESS_OVERHEAD_MB = 1230.0


class ProfileGap(LookupError):
    """The profile has no measurement covering this (model, batch, size)."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str  # "nvidia" (sizes in % of the GPU) | "cpu" (sizes in cores)
    sizes: tuple[float, ...]  # the partition sizes a device of this kind allows, ascending
    full_size: float  # the whole device in the same unit: 100 (%), or the core count
    memory_mb: float
    # (model, size) -> ((batch, latency_ms), ...) ascending by batch
    latency_points: Mapping[tuple[str, float], tuple[tuple[int, float], ...]]
    # (model, size) -> ((batch, l2_fraction, dram_fraction), ...) ascending by batch
    util_points: Mapping[tuple[str, float], tuple[tuple[int, float, float], ...]] = field(
        default_factory=dict
    )
    model_memory_mb: Mapping[str, float] = field(default_factory=dict)
    source: str = ""

    # queries ------------------------------------------------------------------------------
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({m for m, _ in self.latency_points}))

    def measured_sizes(self, model: str) -> tuple[float, ...]:
        return self._sizes_by_model.get(model, ())

    def util_sizes(self, model: str) -> tuple[float, ...]:
        """Sizes at which `model`'s utilisation was measured, ascending."""
        return self._util_sizes_by_model.get(model, ())

    # Derived indexes of the (immutable) tables: planners ask for them thousands of times.
    @functools.cached_property
    def _sizes_by_model(self) -> dict[str, tuple[float, ...]]:
        found: dict[str, list[float]] = defaultdict(list)
        for model, size in self.latency_points:
            found[model].append(size)
        return {m: tuple(sorted(s)) for m, s in found.items()}

    @functools.cached_property
    def _util_sizes_by_model(self) -> dict[str, tuple[float, ...]]:
        found: dict[str, list[float]] = defaultdict(list)
        for model, size in self.util_points:
            found[model].append(size)
        return {m: tuple(sorted(s)) for m, s in found.items()}

    def max_batch(self, model: str, size: float) -> int:
        """Largest batch whose latency this profile covers at `size` (0 if none)."""
        try:
            low, high = self._bracketing_sizes(model, size)
        except ProfileGap:
            return 0
        return min(self.latency_points[(model, low)][-1][0],
                   self.latency_points[(model, high)][-1][0])  # fmt: skip

    def latency_ms(self, model: str, batch: int, size: float) -> float:
        low, high = self._bracketing_sizes(model, size)
        at_low = _interpolate_batch(self.latency_points[(model, low)], batch, model, low)
        if high == low:
            return at_low
        at_high = _interpolate_batch(self.latency_points[(model, high)], batch, model, high)
        weight = (size - low) / (high - low)
        return at_low + weight * (at_high - at_low)

    def utilisation(self, model: str, batch: int, size: float) -> tuple[float, float] | None:
        """(L2, DRAM) utilisation as fractions of peak, interpolated in batch; None if unknown."""
        points = self.util_points.get((model, size))
        if not points:
            return None
        batches = [p[0] for p in points]
        if batch <= batches[0]:
            return points[0][1], points[0][2]
        if batch >= batches[-1]:
            return points[-1][1], points[-1][2]
        i = bisect.bisect_left(batches, batch)
        (b0, l0, d0), (b1, l1, d1) = points[i - 1], points[i]
        w = (batch - b0) / (b1 - b0)
        return l0 + w * (l1 - l0), d0 + w * (d1 - d0)

    def memory_of(self, model: str) -> float:
        return self.model_memory_mb.get(model, DEFAULT_MODEL_MEMORY_MB)

    def _bracketing_sizes(self, model: str, size: float) -> tuple[float, float]:
        sizes = self.measured_sizes(model)
        if not sizes:
            raise ProfileGap(f"profile {self.name} has no measurements of {model}")
        if size in sizes:
            return size, size
        i = bisect.bisect_left(sizes, size)
        if i == 0 or i == len(sizes):
            raise ProfileGap(
                f"profile {self.name}: {model} measured at sizes {list(sizes)}, not around {size}"
            )
        return sizes[i - 1], sizes[i]

    def time_scaled(self, factor: float) -> DeviceProfile:
        """The same device run `factor` times slower: every latency times `factor`.

        Simulated benchmarks use it so that a router, agents and load generator sharing a small
        machine can drive a fast GPU's mix: every rate divides by `factor` and every SLO
        multiplies by it, so plans, batch sizes and ratios between schedulers stay the same.
        """
        if factor <= 0:
            raise ValueError(f"time scale must be > 0, not {factor}")
        if factor == 1:
            return self
        return replace(
            self,
            latency_points={
                key: tuple((b, ms * factor) for b, ms in points)
                for key, points in self.latency_points.items()
            },
            source=f"{self.source} (latencies x{factor:g})",
        )

    # (de)serialisation, for profiles that agents measure and keep in Redis ----------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "sizes": list(self.sizes),
            "full_size": self.full_size,
            "memory_mb": self.memory_mb,
            "latency": [
                {"model": m, "size": s, "points": [list(p) for p in pts]}
                for (m, s), pts in sorted(self.latency_points.items())
            ],
            "utilisation": [
                {"model": m, "size": s, "points": [list(p) for p in pts]}
                for (m, s), pts in sorted(self.util_points.items())
            ],
            "model_memory_mb": dict(self.model_memory_mb),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceProfile:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            sizes=tuple(float(s) for s in data["sizes"]),
            full_size=float(data["full_size"]),
            memory_mb=float(data["memory_mb"]),
            latency_points={
                (str(e["model"]), float(e["size"])): tuple(
                    (int(b), float(ms)) for b, ms in e["points"]
                )
                for e in data["latency"]
            },
            util_points={
                (str(e["model"]), float(e["size"])): tuple(
                    (int(b), float(l2), float(dram)) for b, l2, dram in e["points"]
                )
                for e in data.get("utilisation", [])
            },
            model_memory_mb={str(k): float(v) for k, v in data.get("model_memory_mb", {}).items()},
            source=str(data.get("source", "")),
        )


def _interpolate_batch(
    points: tuple[tuple[int, float], ...], batch: int, model: str, size: float
) -> float:
    batches = [b for b, _ in points]
    if batch < batches[0] or batch > batches[-1]:
        raise ProfileGap(
            f"{model} at size {size:g} measured for batches {batches[0]}..{batches[-1]}, "
            f"not {batch}"
        )
    i = bisect.bisect_left(batches, batch)
    if batches[i] == batch:
        return points[i][1]
    (b0, l0), (b1, l1) = points[i - 1], points[i]
    return l0 + (batch - b0) / (b1 - b0) * (l1 - l0)


# loading NAME.toml profiles ------------------------------------------------------------------
# The profiles the package ships (package data): found wherever gpulet is installed.
PACKAGED_PROFILES = Path(__file__).resolve().parent / "data" / "profiles"

def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a profile CSV; `#` lines are provenance comments."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def load_profile(toml_path: Path) -> DeviceProfile:
    """A NAME.toml profile with its CSVs (format: common/data/profiles/README.md)."""
    meta = tomllib.loads(toml_path.read_text())
    base = toml_path.parent
    latency: dict[tuple[str, float], list[tuple[int, float]]] = defaultdict(list)
    util: dict[tuple[str, float], list[tuple[int, float, float]]] = defaultdict(list)
    for row in read_csv(base / meta["latency"]):
        key = (row["model"], float(row["size_pct"]))
        latency[key].append((int(row["batch"]), float(row["latency_ms"])))
        if row.get("l2_util_pct") and row.get("dram_util_pct"):
            util[key].append(
                (int(row["batch"]), float(row["l2_util_pct"]) / 100,
                 float(row["dram_util_pct"]) / 100)
            )  # fmt: skip
    if "utilisation" in meta:
        for row in read_csv(base / meta["utilisation"]):
            key = (row["model"], float(row["size_pct"]))
            util[key].append(
                (int(row["batch"]), float(row["l2_util_pct"]) / 100,
                 float(row["dram_util_pct"]) / 100)
            )  # fmt: skip
    return DeviceProfile(
        name=str(meta["name"]),
        kind=str(meta.get("vendor", "nvidia")),
        sizes=tuple(sorted(float(s) for s in meta["sizes_pct"])),
        full_size=100.0,
        memory_mb=float(meta["memory_mb"]),
        latency_points={k: tuple(sorted(v)) for k, v in latency.items()},
        util_points={k: tuple(sorted(set(v))) for k, v in util.items()},
        model_memory_mb={str(k): float(v) for k, v in meta.get("model_memory_mb", {}).items()},
        source=str(toml_path),
    )


def profile_search_path(near: Path | None = None) -> list[Path]:
    """Where named profiles are looked up, in order."""
    paths = []
    if os.environ.get("GPULET_PROFILES_DIR"):
        paths.append(Path(os.environ["GPULET_PROFILES_DIR"]))
    if near is not None:
        paths += [near.parent / "profiles", near.parent.parent / "profiles"]
    # A checkout's benchmarks/profiles holds what `gpulet profile --nvidia --out` measured.
    repo = Path(__file__).resolve().parents[1]
    paths += [repo / "benchmarks" / "profiles", PACKAGED_PROFILES]
    return paths


def find_profile(name: str, near: Path | None = None) -> DeviceProfile:
    """Load profile `name` from the first search-path folder that has NAME.toml."""
    tried = profile_search_path(near)
    for folder in tried:
        candidate = folder / f"{name}.toml"
        if candidate.exists():
            return load_profile(candidate)
    raise FileNotFoundError(
        f"no profile {name!r}: looked for {name}.toml in {[str(p) for p in tried]}; "
        "set GPULET_PROFILES_DIR to the folder that holds it"
    )


def merge_points(
    rows: Iterable[tuple[str, float, int, float]],
) -> dict[tuple[str, float], tuple[tuple[int, float], ...]]:
    """(model, size, batch, latency_ms) rows -> latency_points, batches ascending."""
    table: dict[tuple[str, float], list[tuple[int, float]]] = defaultdict(list)
    for model, size, batch, latency in rows:
        table[(model, size)].append((batch, latency))
    return {k: tuple(sorted(v)) for k, v in table.items()}
