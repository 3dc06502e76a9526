"""Fitted interference models: the original's linear form and a per-pair nearest-neighbour table.

Both implement `InterferenceModel` (interference.py); `load_interference` reads the data files
that `interference_fit.py` writes, `fitted_for(profile)` finds the one shipped for a profile.
Everything here is pure but the two loaders, which read a JSON file (and the named profile).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.interference import Corunner, InterferenceModel
from common.profiles import DeviceProfile, find_profile

DATA_DIR = Path(__file__).parent / "data"

KIND_LINEAR = "linear"
KIND_PAIR_KNN = "pair_knn"

# The original profiled utilisation on the whole GPU and scaled it by the partition fraction
# (reference/gpulet-paper.md section 3.2); this is the size it was measured at.
WHOLE_GPU_PCT = 100.0

# Pair table: slowdown at a query is the inverse-distance-weighted geometric mean of the
# KNN_NEIGHBOURS nearest measured points of the same (target, neighbour) pair, on a grid where one
# unit is one step of the measured grids: a doubling of batch, or GRID_SIZE_STEP_PCT of the GPU.
KNN_NEIGHBOURS = 3
GRID_SIZE_STEP_PCT = 20.0
# Added to distances so an exact hit dominates without dividing by zero.
KNN_DISTANCE_FLOOR = 1e-3

Coefficients = tuple[float, float, float, float, float]


@dataclass(frozen=True)
class UtilLookup:
    l2: float  # fraction of the whole GPU's peak, at the requested partition
    dram: float
    measured_size: float  # the partition the figures were measured at (WHOLE_GPU_PCT if exact)


def whole_gpu_utilisation(
    profile: DeviceProfile, model: str, batch: int, size: float
) -> UtilLookup | None:
    """The original's feature: utilisation profiled on the whole GPU, scaled by size/100.

    Where the profile has no whole-GPU utilisation for `model`, the largest measured partition s
    stands in: U(s) measured at s is taken as U_whole * s/100, so the feature is U(s) * size/s.
    None when the profile has no utilisation for `model` at all.
    """
    sizes = profile.util_sizes(model)
    if not sizes:
        return None
    measured = WHOLE_GPU_PCT if WHOLE_GPU_PCT in sizes else sizes[-1]
    util = profile.utilisation(model, batch, measured)
    if util is None:
        return None
    scale = size / measured
    return UtilLookup(util[0] * scale, util[1] * scale, measured)


def linear_features(
    profile: DeviceProfile, target: Corunner, neighbour: Corunner
) -> tuple[float, float, float, float] | None:
    """(own L2, other L2, own DRAM, other DRAM), the order of the original's c0..c3."""
    own = whole_gpu_utilisation(profile, target.model, target.batch, target.size)
    other = whole_gpu_utilisation(profile, neighbour.model, neighbour.batch, neighbour.size)
    if own is None or other is None:
        return None
    return own.l2, other.l2, own.dram, other.dram


@dataclass(frozen=True)
class LinearInterference:
    """alpha = c0*l2_A + c1*l2_B + c2*mem_A + c3*mem_B + c4, alpha >= 1; max over neighbours.

    A pair whose utilisation the profile lacks gets `fallback_alpha` (the fit stores the mean
    measured slowdown there): a typical co-location, never a silent 1.0.
    """

    profile: DeviceProfile
    coefficients: Coefficients
    fallback_alpha: float = 1.0

    def pair_slowdown(self, target: Corunner, neighbour: Corunner) -> float:
        features = linear_features(self.profile, target, neighbour)
        if features is None:
            return max(self.fallback_alpha, 1.0)
        *weights, constant = self.coefficients
        alpha = constant + sum(w * x for w, x in zip(weights, features, strict=True))
        return max(alpha, 1.0)

    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float:
        return max((self.pair_slowdown(target, n) for n in neighbours), default=1.0)


@dataclass(frozen=True)
class PairPoint:
    """One measured co-location: `target` ran `slowdown` times slower than solo beside it."""

    target: Corunner
    neighbour: Corunner
    slowdown: float


def grid_position(target: Corunner, neighbour: Corunner) -> tuple[float, float, float, float]:
    """Where a co-location sits on the measured grid (units: see KNN_NEIGHBOURS)."""
    return (
        math.log2(max(target.batch, 1)),
        target.size / GRID_SIZE_STEP_PCT,
        math.log2(max(neighbour.batch, 1)),
        neighbour.size / GRID_SIZE_STEP_PCT,
    )


@dataclass(frozen=True, eq=False)
class _PairTable:
    positions: npt.NDArray[np.float64]  # (n, 4) grid positions
    log_slowdowns: npt.NDArray[np.float64]  # (n,)


# Pair answers kept per model; enough for every pair a plan meets, small beside the heap.
MEMO_LIMIT = 50_000


@dataclass(frozen=True, eq=False)
class PairNeighbourInterference:
    """Nearest measured points of the same model pair; the linear form for unmeasured pairs."""

    points: tuple[PairPoint, ...]
    fallback: LinearInterference
    neighbours: int = KNN_NEIGHBOURS
    _tables: Mapping[tuple[str, str], _PairTable] = field(init=False, repr=False)
    # Answers already computed: the lookup is pure, and a plan asks the same pairs many times.
    _memo: dict[tuple[Corunner, Corunner], float] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        grouped: dict[tuple[str, str], list[PairPoint]] = {}
        for point in self.points:
            grouped.setdefault((point.target.model, point.neighbour.model), []).append(point)
        tables = {
            pair: _PairTable(
                np.array([grid_position(p.target, p.neighbour) for p in pts], dtype=np.float64),
                np.log(np.array([p.slowdown for p in pts], dtype=np.float64)),
            )
            for pair, pts in grouped.items()
        }
        object.__setattr__(self, "_tables", tables)

    def pair_slowdown(self, target: Corunner, neighbour: Corunner) -> float:
        key = (target, neighbour)
        known = self._memo.get(key)
        if known is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()  # a long-lived agent must not grow it forever
            known = self._memo[key] = self._pair_slowdown(target, neighbour)
        return known

    def _pair_slowdown(self, target: Corunner, neighbour: Corunner) -> float:
        table = self._tables.get((target.model, neighbour.model))
        if table is None:
            return self.fallback.pair_slowdown(target, neighbour)
        query = np.array(grid_position(target, neighbour), dtype=np.float64)
        distances = np.sqrt(((table.positions - query) ** 2).sum(axis=1))
        nearest = np.argsort(distances, kind="stable")[: self.neighbours]
        weights = 1.0 / (distances[nearest] + KNN_DISTANCE_FLOOR)
        log_alpha = float((weights * table.log_slowdowns[nearest]).sum() / weights.sum())
        return max(math.exp(log_alpha), 1.0)

    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float:
        return max((self.pair_slowdown(target, n) for n in neighbours), default=1.0)


# data files ------------------------------------------------------------------------------
def linear_params(model: LinearInterference) -> dict[str, Any]:
    return {"coefficients": list(model.coefficients), "fallback_alpha": model.fallback_alpha}


def pair_knn_params(model: PairNeighbourInterference) -> dict[str, Any]:
    return {
        "neighbours": model.neighbours,
        "columns": [
            "model",
            "batch",
            "size_pct",
            "corunner",
            "corunner_batch",
            "corunner_size_pct",
            "slowdown",
        ],
        "points": [
            [
                p.target.model,
                p.target.batch,
                p.target.size,
                p.neighbour.model,
                p.neighbour.batch,
                p.neighbour.size,
                p.slowdown,
            ]
            for p in model.points
        ],
    }


def linear_from_params(profile: DeviceProfile, params: Mapping[str, Any]) -> LinearInterference:
    raw = [float(c) for c in params["coefficients"]]
    if len(raw) != 5:
        raise ValueError(f"a linear interference model has 5 coefficients (c0..c4), not {raw}")
    coefficients: Coefficients = (raw[0], raw[1], raw[2], raw[3], raw[4])
    return LinearInterference(profile, coefficients, float(params.get("fallback_alpha", 1.0)))


def pair_knn_from_params(
    params: Mapping[str, Any], fallback: LinearInterference
) -> PairNeighbourInterference:
    points = tuple(
        PairPoint(
            Corunner(str(m), int(b), float(s)), Corunner(str(n), int(nb), float(ns)), float(alpha)
        )
        for m, b, s, n, nb, ns, alpha in params["points"]
    )
    return PairNeighbourInterference(points, fallback, int(params["neighbours"]))


def interference_from_json(
    data: Mapping[str, Any], profile: DeviceProfile
) -> LinearInterference | PairNeighbourInterference:
    """The model a data file describes; `data["linear"]` is always there (the fallback)."""
    linear = linear_from_params(profile, data["linear"])
    kind = data["kind"]
    if kind == KIND_LINEAR:
        return linear
    if kind == KIND_PAIR_KNN:
        return pair_knn_from_params(data[KIND_PAIR_KNN], linear)
    raise ValueError(
        f"unknown interference model kind {kind!r}: use {KIND_LINEAR!r} or {KIND_PAIR_KNN!r}"
    )


def load_interference(path: Path, profile: DeviceProfile | None = None) -> InterferenceModel:
    """Read a data file; the profile it names is loaded unless one is given."""
    data = json.loads(path.read_text())
    if profile is None:
        profile = find_profile(str(data["profile"]))
    return interference_from_json(data, profile)


def fitted_for(
    profile_name: str, profile: DeviceProfile | None = None, data_dir: Path = DATA_DIR
) -> InterferenceModel | None:
    """The shipped model for a profile (data/<profile>-interference.json), None if none."""
    path = data_dir / f"{profile_name}-interference.json"
    if not path.exists():
        return None
    return load_interference(path, profile)
