"""common.interference_models and interference_fit: the original's linear form, the
per-pair nearest-neighbour table, the fit, cross-validation and the shipped data files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.interference import Corunner
from common.interference_models import (
    DATA_DIR,
    KIND_LINEAR,
    KIND_PAIR_KNN,
    LinearInterference,
    PairNeighbourInterference,
    fitted_for,
    linear_features,
    load_interference,
)
from common.profiles import DeviceProfile, find_profile
from router.scheduling.interference_fit import (
    KIND_NONE,
    ErrorStats,
    Observation,
    better_kind,
    cross_validated_latency_ms,
    data_document,
    error_stats,
    evaluate,
    fit_linear,
    fit_pair_knn,
    kfold_indices,
    observations_from_rows,
    write_data_file,
)

pytestmark = pytest.mark.timeout(60)

# The original's RTX 2080 Ti constants and profiled utilisation (reference/gpulet-paper.md 3.2).
C_2080TI = (0.1129, 0.7160, 0.3549, 0.0882, 0.8954)
UTIL_2080TI = {"resnet50": (0.282, 0.623), "vgg16": (0.302, 0.611), "lenet": (0.070, 0.254)}


def _profile(
    util: dict[str, tuple[float, float]] | None = None, size: float = 100.0
) -> DeviceProfile:
    """Utilisation measured at `size` for batch 32 only; resnet50 latency at 50 and 100 %."""
    util = UTIL_2080TI if util is None else util
    return DeviceProfile(
        name="fake",
        kind="nvidia",
        sizes=(20.0, 40.0, 50.0, 60.0, 80.0, 100.0),
        full_size=100.0,
        memory_mb=11000.0,
        latency_points={
            ("resnet50", 50.0): ((1, 4.0), (32, 40.0)),
            ("resnet50", 100.0): ((1, 2.0), (32, 20.0)),
        },
        util_points={(m, size): ((32, l2, dram),) for m, (l2, dram) in util.items()},
    )


def _linear(
    coefficients: tuple[float, ...] = C_2080TI, fallback: float = 1.2
) -> LinearInterference:
    c0, c1, c2, c3, c4 = coefficients
    return LinearInterference(_profile(), (c0, c1, c2, c3, c4), fallback)


# the linear form -------------------------------------------------------------------------
def test_linear_features_scale_whole_gpu_utilisation_by_size() -> None:
    features = linear_features(
        _profile(), Corunner("resnet50", 32, 50.0), Corunner("vgg16", 32, 50.0)
    )
    assert features == pytest.approx((0.141, 0.151, 0.3115, 0.3055))


def test_features_from_the_largest_partition_when_no_whole_gpu_figure() -> None:
    # measured at 80 %: U_whole is taken as U(80) * 100/80, so the feature at 40 % is U(80) / 2
    profile = _profile({"resnet50": (0.4, 0.8), "vgg16": (0.2, 0.6)}, size=80.0)
    features = linear_features(profile, Corunner("resnet50", 32, 40.0), Corunner("vgg16", 32, 60.0))
    assert features == pytest.approx((0.2, 0.15, 0.4, 0.45))


@pytest.mark.parametrize(
    ("target", "neighbour", "alpha"),
    [
        # the paper's worked example: ResNet50 b32 @50 % + VGG16 b32 @50 %, both sides
        (Corunner("resnet50", 32, 50.0), Corunner("vgg16", 32, 50.0), 1.157),
        (Corunner("vgg16", 32, 50.0), Corunner("resnet50", 32, 50.0), 1.149),
    ],
)
def test_linear_reproduces_the_papers_worked_example(
    target: Corunner, neighbour: Corunner, alpha: float
) -> None:
    assert _linear().slowdown(target, [neighbour]) == pytest.approx(alpha, abs=5e-4)


def test_linear_clamps_at_one() -> None:
    model = _linear((0.1, 0.1, 0.1, 0.1, 0.5))
    pair = (Corunner("resnet50", 32, 50.0), [Corunner("vgg16", 32, 50.0)])
    assert model.slowdown(*pair) == 1.0


def test_linear_takes_the_worst_neighbour() -> None:
    model = _linear()
    target = Corunner("resnet50", 32, 40.0)
    light, heavy = Corunner("lenet", 32, 20.0), Corunner("vgg16", 32, 40.0)
    alone = [model.slowdown(target, [n]) for n in (light, heavy)]
    assert alone[0] < alone[1]
    assert model.slowdown(target, [light, heavy]) == alone[1]
    assert model.slowdown(target, [heavy, light]) == alone[1]


def test_no_neighbours_no_slowdown() -> None:
    assert _linear().slowdown(Corunner("resnet50", 32, 100.0), []) == 1.0


def test_unknown_utilisation_gets_the_fallback_alpha() -> None:
    model = _linear(fallback=1.3)
    assert model.slowdown(Corunner("bert", 8, 50.0), [Corunner("vgg16", 32, 50.0)]) == 1.3
    assert model.slowdown(Corunner("vgg16", 8, 50.0), [Corunner("bert", 32, 50.0)]) == 1.3
    assert _linear(fallback=0.7).slowdown(Corunner("bert", 8, 50.0), [Corunner("x", 1, 50)]) == 1.0


# fitting ---------------------------------------------------------------------------------
def _synthetic(
    coefficients: tuple[float, ...], count: int = 200, seed: int = 1
) -> tuple[DeviceProfile, list[Observation]]:
    """Noiseless points of the linear form over random utilisations, batches and splits."""
    rng = np.random.default_rng(seed)
    models = [f"m{i}" for i in range(6)]
    util_points = {
        (m, 100.0): tuple((b, *rng.uniform(0.05, 0.9, 2)) for b in (1, 8, 32)) for m in models
    }
    profile = DeviceProfile("syn", "nvidia", (20.0, 100.0), 100.0, 1.0, {}, util_points)
    observations = []
    for _ in range(count):
        a, b = rng.choice(models, 2)
        size = float(rng.choice([20.0, 40.0, 50.0, 60.0, 80.0]))
        target = Corunner(str(a), int(rng.choice([1, 4, 8, 32])), size)
        neighbour = Corunner(str(b), int(rng.choice([1, 4, 8, 32])), 100.0 - size)
        features = linear_features(profile, target, neighbour)
        assert features is not None
        alpha = float(np.dot(coefficients[:4], features)) + coefficients[4]
        solo_ms = float(rng.uniform(1.0, 50.0))
        observations.append(Observation(target, neighbour, solo_ms * alpha, solo_ms))
    return profile, observations


def test_fit_recovers_known_coefficients() -> None:
    truth = (0.3, 0.8, 0.2, 0.5, 1.05)
    profile, observations = _synthetic(truth)
    fitted = fit_linear(profile, observations)
    assert fitted.coefficients == pytest.approx(truth, abs=1e-9)
    assert fitted.fallback_alpha == pytest.approx(np.mean([o.slowdown for o in observations]))


@pytest.mark.parametrize(("n", "folds"), [(10, 5), (11, 5), (4, 2), (1050, 5), (7, 7)])
def test_kfold_covers_every_point_exactly_once(n: int, folds: int) -> None:
    split = kfold_indices(n, folds, np.random.default_rng(0))
    assert len(split) == folds
    assert sorted(np.concatenate(split).tolist()) == list(range(n))
    assert max(map(len, split)) - min(map(len, split)) <= 1


def test_error_stats_by_hand() -> None:
    measured = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    predicted = np.array([10.0, 11.0, 9.0, 12.0, 15.0])  # errors 0, .1, .1, .2, .5
    stats = error_stats(predicted, measured)
    assert stats.median == pytest.approx(0.1)
    assert stats.p90 == pytest.approx(0.38)
    assert stats.points == 5


def test_cross_validation_of_noiseless_linear_data_is_exact() -> None:
    profile, observations = _synthetic((0.3, 0.8, 0.2, 0.5, 1.05))
    predicted = cross_validated_latency_ms(observations, lambda o: fit_linear(profile, o), 5, 0)
    measured = np.array([o.latency_ms for o in observations])
    assert predicted == pytest.approx(measured, rel=1e-9)
    errors = evaluate(profile, observations)
    assert errors[KIND_LINEAR].p90 < 1e-9 < errors[KIND_NONE].median
    assert better_kind(errors) == KIND_LINEAR


def test_observations_from_both_csv_formats() -> None:
    profile = _profile()
    rows = [
        {"model": "resnet50", "batch": "32", "size_pct": "50", "corunner": "vgg16",
         "corunner_batch": "8", "latency_ms": "44"},
        {"model": "resnet50", "batch": "64", "size_pct": "50", "corunner": "vgg16",
         "corunner_batch": "8", "latency_ms": "90"},
        {"model1": "resnet50", "model2": "vgg16", "batch1": "1", "batch2": "4", "th1_pct": "50",
         "th2_pct": "50", "lat1_ms": "5", "lat2_ms": "7", "std1_ms": "0", "std2_ms": "0"},
    ]  # fmt: skip
    observations, skipped = observations_from_rows(profile, rows)
    assert observations[0] == Observation(
        Corunner("resnet50", 32, 50.0), Corunner("vgg16", 8, 50.0), 44.0, 40.0
    )
    assert observations[0].slowdown == pytest.approx(1.1)
    assert observations[1].target == Corunner("resnet50", 1, 50.0)
    assert observations[1].slowdown == pytest.approx(1.25)
    # batch 64 is past the profile; vgg16 has no latency: both are profile gaps
    assert len(observations) == 2
    assert skipped["profile_gap"] == 2


# the pair table and data files -----------------------------------------------------------
def test_pair_table_reproduces_its_points_and_falls_back_to_linear() -> None:
    profile, observations = _synthetic((0.3, 0.8, 0.2, 0.5, 1.05), count=60)
    model = fit_pair_knn(profile, observations)
    for obs in observations[:10]:
        expected = max(obs.slowdown, 1.0)
        assert model.slowdown(obs.target, [obs.neighbour]) == pytest.approx(expected, rel=0.02)
    unseen = (Corunner("m0", 8, 50.0), Corunner("zz", 8, 50.0))
    assert model.pair_slowdown(*unseen) == model.fallback.pair_slowdown(*unseen)
    assert model.slowdown(Corunner("m0", 8, 50.0), []) == 1.0


@pytest.mark.parametrize("kind", [KIND_LINEAR, KIND_PAIR_KNN])
def test_data_file_round_trip(tmp_path: Path, kind: str) -> None:
    profile, observations = _synthetic((0.3, 0.8, 0.2, 0.5, 1.05), count=80)
    knn = fit_pair_knn(profile, observations)
    errors = {KIND_NONE: ErrorStats(0.2, 0.3, 80), kind: ErrorStats(0.1, 0.2, 80)}
    path = write_data_file(tmp_path, "syn", data_document("syn", kind, knn, errors, {"n": 80}))
    assert path == tmp_path / "syn-interference.json"
    assert json.loads(path.read_text())["made_by"].endswith("--profile syn")
    loaded = load_interference(path, profile)
    original = knn if kind == KIND_PAIR_KNN else knn.fallback
    assert type(loaded) is type(original)
    for obs in observations[::7]:
        query = (Corunner(obs.target.model, 4, 30.0), [obs.neighbour])
        assert loaded.slowdown(*query) == original.slowdown(*query)
    assert fitted_for("syn", profile, data_dir=tmp_path) is not None
    assert fitted_for("absent", profile, data_dir=tmp_path) is None


def test_unknown_kind_in_a_data_file_names_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "magic", "linear": {"coefficients": [0, 0, 0, 0, 1]}}))
    with pytest.raises(ValueError, match="pair_knn"):
        load_interference(path, _profile())


@pytest.mark.parametrize("name", ["a100-class", "v100-trt"])
def test_shipped_data_files_load_and_predict_slowdowns(name: str) -> None:
    profile = find_profile(name)
    model = fitted_for(name, profile)
    assert isinstance(model, PairNeighbourInterference)
    a, b = ("resnet50", "vgg19")
    for size in (20.0, 50.0, 80.0):
        for batch in (1, 8, 32):
            target, neighbour = Corunner(a, batch, size), Corunner(b, batch, 100.0 - size)
            assert model.slowdown(target, [neighbour]) >= 1.0
            assert model.fallback.slowdown(target, [neighbour]) >= 1.0
    # an unmeasured pair still gets an answer (the linear form, or its fallback alpha)
    assert model.slowdown(Corunner(a, 4, 50.0), [Corunner("no_such_model", 4, 50.0)]) >= 1.0
    report = json.loads((DATA_DIR / f"{name}-interference.json").read_text())["fit_error"]
    assert report[KIND_PAIR_KNN]["median"] < report[KIND_LINEAR]["median"]
    assert report[KIND_LINEAR]["median"] < report[KIND_NONE]["median"]
