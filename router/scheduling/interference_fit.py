"""Fit interference models on a profile's measured co-locations, cross-validate, write data files.

Run from the repository root:
    python -m router.scheduling.interference_fit [--profile NAME ...] [--out DIR]
For each profile it reads its NAME-interference.csv (common/data/profiles), fits the original's
linear form and the per-pair nearest-neighbour table (interference_models.py), reports the k-fold
cross-validated relative error of co-located latency for both and for "no interference", and
writes DIR/NAME-interference.json holding the better model (and the linear coefficients).

Assumptions, also written into each data file:
    1. slowdown = measured co-located latency / the profile's solo latency at the same batch and
       partition (interpolated by DeviceProfile.latency_ms); points it cannot cover are skipped;
    2. a100-class's co-runner partition is not recorded: taken as 100 - size_pct;
    3. v100-trt rows are pairs; each gives two observations, one per side.
The fit, prediction, split and error statistics are pure functions; only `load_observations`,
`write_data_file` and `main` touch files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.interference import Corunner, InterferenceModel, NoInterference
from common.interference_models import (
    DATA_DIR,
    KIND_LINEAR,
    KIND_PAIR_KNN,
    WHOLE_GPU_PCT,
    LinearInterference,
    PairNeighbourInterference,
    PairPoint,
    linear_features,
    linear_params,
    pair_knn_params,
    whole_gpu_utilisation,
)
from common.profiles import DeviceProfile, ProfileGap, find_profile, read_csv

DEFAULT_PROFILES = ("a100-class", "v100-trt")
DEFAULT_FOLDS = 5
DEFAULT_SEED = 0
KIND_NONE = "none"  # the reference: alpha = 1 everywhere
ERROR_QUANTILE = 0.9
# An array holding no array or object, as json.dumps(indent=1) lays it out: items one per line.
INNERMOST_ARRAY = re.compile(r"\[\n\s*([^\[\]{}]*?)\n\s*\]")
ITEM_BREAK = re.compile(r",\n\s*")

ASSUMPTIONS = (
    "slowdown = measured co-located latency / profile solo latency_ms at the same batch and size",
    "a100-class: the co-runner's partition is not recorded; taken as 100 - size_pct",
    "v100-trt: each pair row gives two observations, one per side",
    "utilisation: whole-GPU (100 %) figures scaled by size/100 as the original; where a model "
    "has none at 100 %, its largest measured partition s stands in, scaled by size/s",
)

Fitter = Callable[[Sequence["Observation"]], InterferenceModel]


@dataclass(frozen=True)
class Observation:
    target: Corunner
    neighbour: Corunner
    latency_ms: float  # measured, co-located
    solo_ms: float  # the profile's solo latency at the target's batch and size

    @property
    def slowdown(self) -> float:
        return self.latency_ms / self.solo_ms


@dataclass(frozen=True)
class ErrorStats:
    median: float
    p90: float
    points: int


# loading (I/O) ----------------------------------------------------------------------------
def observations_from_rows(
    profile: DeviceProfile, rows: Sequence[Mapping[str, str]]
) -> tuple[list[Observation], Counter[str]]:
    """Observations from interference CSV rows (either format), and skipped points by reason."""
    observations: list[Observation] = []
    skipped: Counter[str] = Counter(profile_gap=0)
    for row in rows:
        for target, neighbour, latency_ms in _sides(profile, row):
            try:
                solo_ms = profile.latency_ms(target.model, target.batch, target.size)
            except ProfileGap:
                skipped["profile_gap"] += 1
                continue
            observations.append(Observation(target, neighbour, latency_ms, solo_ms))
    return observations, skipped


def _sides(
    profile: DeviceProfile, row: Mapping[str, str]
) -> list[tuple[Corunner, Corunner, float]]:
    if "corunner" in row:  # one target beside one co-runner of unrecorded partition
        size = float(row["size_pct"])
        target = Corunner(row["model"], int(row["batch"]), size)
        neighbour = Corunner(row["corunner"], int(row["corunner_batch"]), profile.full_size - size)
        return [(target, neighbour, float(row["latency_ms"]))]
    if "model1" in row:  # a pair, both sides measured
        one = Corunner(row["model1"], int(row["batch1"]), float(row["th1_pct"]))
        two = Corunner(row["model2"], int(row["batch2"]), float(row["th2_pct"]))
        return [(one, two, float(row["lat1_ms"])), (two, one, float(row["lat2_ms"]))]
    raise ValueError(f"unknown interference CSV columns {sorted(row)}: see "
                     "common/data/profiles/README.md")


def load_observations(profile: DeviceProfile) -> tuple[list[Observation], Counter[str]]:
    """The profile's interference CSV (named by `interference` in its TOML)."""
    toml_path = Path(profile.source)
    meta = tomllib.loads(toml_path.read_text())
    csv_name = str(meta.get("interference", f"{profile.name}-interference.csv"))
    return observations_from_rows(profile, read_csv(toml_path.parent / csv_name))


def utilisation_sources(
    profile: DeviceProfile, observations: Sequence[Observation]
) -> Counter[str]:
    """How each utilisation lookup (target and neighbour of every point) was answered."""
    sources: Counter[str] = Counter()
    for obs in observations:
        for run in (obs.target, obs.neighbour):
            found = whole_gpu_utilisation(profile, run.model, run.batch, run.size)
            if found is None:
                sources["missing"] += 1
            elif found.measured_size == WHOLE_GPU_PCT:
                sources["whole_gpu"] += 1
            else:
                sources[f"scaled_from_{found.measured_size:g}pct"] += 1
    return sources


# fitting and evaluation (pure) ------------------------------------------------------------
def fit_linear(profile: DeviceProfile, observations: Sequence[Observation]) -> LinearInterference:
    """Least squares of slowdown on (own L2, other L2, own DRAM, other DRAM, 1).

    Points without utilisation are left out of the fit; the fallback alpha is the mean measured
    slowdown of all points (1.0 with none). With no usable point the model is that constant.
    """
    slowdowns = [o.slowdown for o in observations]
    fallback = float(np.mean(slowdowns)) if slowdowns else 1.0
    rows = [(linear_features(profile, o.target, o.neighbour), o.slowdown) for o in observations]
    usable = [(features, y) for features, y in rows if features is not None]
    if not usable:
        return LinearInterference(profile, (0.0, 0.0, 0.0, 0.0, fallback), fallback)
    design = np.array([[*features, 1.0] for features, _ in usable], dtype=np.float64)
    target = np.array([y for _, y in usable], dtype=np.float64)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    c0, c1, c2, c3, c4 = (float(c) for c in solution)
    return LinearInterference(profile, (c0, c1, c2, c3, c4), fallback)


def fit_pair_knn(
    profile: DeviceProfile, observations: Sequence[Observation]
) -> PairNeighbourInterference:
    points = tuple(PairPoint(o.target, o.neighbour, o.slowdown) for o in observations)
    return PairNeighbourInterference(points, fit_linear(profile, observations))


def fit_none(observations: Sequence[Observation]) -> InterferenceModel:
    return NoInterference()


def fitters(profile: DeviceProfile) -> dict[str, Fitter]:
    return {
        KIND_NONE: fit_none,
        KIND_LINEAR: partial(fit_linear, profile),
        KIND_PAIR_KNN: partial(fit_pair_knn, profile),
    }


def predict_latency_ms(
    model: InterferenceModel, observations: Sequence[Observation]
) -> npt.NDArray[np.float64]:
    """L_coloc = L_solo * alpha, alpha from the model."""
    return np.array(
        [o.solo_ms * model.slowdown(o.target, [o.neighbour]) for o in observations],
        dtype=np.float64,
    )


def kfold_indices(n: int, folds: int, rng: np.random.Generator) -> list[npt.NDArray[np.intp]]:
    """A shuffled split of range(n) into `folds` parts of near-equal size."""
    return list(np.array_split(rng.permutation(n), folds))


def cross_validated_latency_ms(
    observations: Sequence[Observation], fit: Fitter, folds: int, seed: int
) -> npt.NDArray[np.float64]:
    """Each point predicted by the model fitted on the other folds."""
    predicted = np.empty(len(observations), dtype=np.float64)
    split = kfold_indices(len(observations), folds, np.random.default_rng(seed))
    for held_out in split:
        held = set(held_out.tolist())
        model = fit([o for i, o in enumerate(observations) if i not in held])
        predicted[held_out] = predict_latency_ms(model, [observations[i] for i in held_out])
    return predicted


def error_stats(
    predicted_ms: npt.NDArray[np.float64], measured_ms: npt.NDArray[np.float64]
) -> ErrorStats:
    """Median and p90 of |predicted - measured| / measured."""
    relative = np.abs(predicted_ms - measured_ms) / measured_ms
    return ErrorStats(
        float(np.median(relative)), float(np.quantile(relative, ERROR_QUANTILE)), len(relative)
    )


def evaluate(
    profile: DeviceProfile,
    observations: Sequence[Observation],
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
) -> dict[str, ErrorStats]:
    """Cross-validated error per model kind, every kind on the same split."""
    measured = np.array([o.latency_ms for o in observations], dtype=np.float64)
    return {
        kind: error_stats(cross_validated_latency_ms(observations, fit, folds, seed), measured)
        for kind, fit in fitters(profile).items()
    }


def better_kind(errors: Mapping[str, ErrorStats]) -> str:
    """The fitted kind with the lowest median error (p90 breaks ties)."""
    fitted = [k for k in errors if k != KIND_NONE]
    return min(fitted, key=lambda k: (errors[k].median, errors[k].p90))


def data_document(
    profile_name: str,
    kind: str,
    knn: PairNeighbourInterference,
    errors: Mapping[str, ErrorStats],
    counts: Mapping[str, Any],
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """What a data file holds: the kind, both models' parameters, how made and how good."""
    document: dict[str, Any] = {
        "kind": kind,
        "profile": profile_name,
        "made_by": f"python -m router.scheduling.interference_fit --profile {profile_name}",
        "linear": linear_params(knn.fallback),
        "fit_error": {
            "method": f"{folds}-fold cross-validation, numpy default_rng({seed}) shuffle; "
            "relative error |predicted - measured| / measured of co-located latency",
            **{k: vars(e) for k, e in errors.items()},
        },
        "counts": dict(counts),
        "assumptions": list(ASSUMPTIONS),
    }
    if kind == KIND_PAIR_KNN:
        document[KIND_PAIR_KNN] = pair_knn_params(knn)
    return document


# entry point ------------------------------------------------------------------------------
def write_data_file(out_dir: Path, profile_name: str, document: Mapping[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{profile_name}-interference.json"
    path.write_text(render_json(document))
    return path


def render_json(document: Mapping[str, Any]) -> str:
    """Indented JSON with each innermost array (a point, the coefficients) on one line."""
    text = json.dumps(document, indent=1)
    return INNERMOST_ARRAY.sub(lambda m: f"[{', '.join(ITEM_BREAK.split(m[1]))}]", text) + "\n"


def format_table(results: Mapping[str, Mapping[str, ErrorStats]]) -> str:
    lines = [f"{'profile':<12} {'model':<9} {'median':>8} {'p90':>8} {'points':>7}"]
    for profile_name, errors in results.items():
        for kind, e in errors.items():
            lines.append(
                f"{profile_name:<12} {kind:<9} {e.median:>8.2%} {e.p90:>8.2%} {e.points:>7}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", action="append", help="profile name (repeatable)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the data files")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, ErrorStats]] = {}
    for name in args.profile or DEFAULT_PROFILES:
        profile = find_profile(name)
        observations, skipped = load_observations(profile)
        errors = evaluate(profile, observations)
        kind = better_kind(errors)
        knn = fit_pair_knn(profile, observations)
        counts = {
            "observations": len(observations),
            "skipped": dict(skipped),
            "utilisation_lookups": dict(utilisation_sources(profile, observations)),
        }
        path = write_data_file(args.out, name, data_document(name, kind, knn, errors, counts))
        results[name] = errors
        print(
            f"{name}: kept {kind}; linear c0..c4 = "
            f"{[round(c, 4) for c in knn.fallback.coefficients]}; {counts}; wrote {path}"
        )
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
