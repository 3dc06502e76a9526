"""common.profiles: measured points, linear interpolation in batch then size, no extrapolation.

Expectations on the hand-made profile below are worked by hand; the real profiles the package
ships (common/data/profiles) are checked against rows of their own CSVs, read here independently
of the loader.
"""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from common.profiles import (
    DEFAULT_MODEL_MEMORY_MB,
    PACKAGED_PROFILES,
    DeviceProfile,
    ProfileGap,
    find_profile,
    load_profile,
    merge_points,
)

pytestmark = pytest.mark.timeout(60)


# A toy GPU. "m" is measured at 50 % (batches 1, 2, 4, 8) and 100 % (batches 1, 2, 4);
# "n" only at 100 % (batches 1 and 16). 25 % is an allowed size nobody measured.
TOY = DeviceProfile(
    name="toy",
    kind="nvidia",
    sizes=(25.0, 50.0, 100.0),
    full_size=100.0,
    memory_mb=16000.0,
    latency_points={
        ("m", 50.0): ((1, 10.0), (2, 12.0), (4, 20.0), (8, 36.0)),
        ("m", 100.0): ((1, 6.0), (2, 8.0), (4, 12.0)),
        ("n", 100.0): ((1, 3.0), (16, 48.0)),
    },
    util_points={("m", 50.0): ((1, 0.1, 0.2), (4, 0.4, 0.8))},
    model_memory_mb={"m": 800.0},
    source="hand-made",
)


def test_queries_of_the_tables() -> None:
    assert TOY.models() == ("m", "n")
    assert TOY.measured_sizes("m") == (50.0, 100.0)
    assert TOY.measured_sizes("n") == (100.0,)
    assert TOY.measured_sizes("zz") == ()
    assert TOY.util_sizes("m") == (50.0,)
    assert TOY.util_sizes("n") == ()


LATENCY = [
    # measured points come back as they are
    pytest.param("m", 1, 50.0, 10.0, id="exact-b1-s50"),
    pytest.param("m", 4, 50.0, 20.0, id="exact-b4-s50"),
    pytest.param("m", 8, 50.0, 36.0, id="exact-last-batch-s50"),
    pytest.param("m", 2, 100.0, 8.0, id="exact-b2-s100"),
    pytest.param("n", 16, 100.0, 48.0, id="exact-n-b16"),
    # in batch, at a measured size: linear between the neighbouring batches
    pytest.param("m", 3, 50.0, 16.0, id="batch-3-midpoint-of-2-and-4"),
    pytest.param("m", 6, 50.0, 28.0, id="batch-6-midpoint-of-4-and-8"),
    pytest.param("m", 5, 50.0, 24.0, id="batch-5-quarter-from-4-to-8"),
    pytest.param("m", 3, 100.0, 10.0, id="batch-3-s100"),
    pytest.param("n", 6, 100.0, 18.0, id="batch-6-third-from-1-to-16"),  # 3 + 5/15 * 45
    # in size, at a measured batch: weight (size - 50) / 50 towards the 100 % point
    pytest.param("m", 1, 75.0, 8.0, id="size-75-midpoint"),
    pytest.param("m", 1, 60.0, 9.2, id="size-60-weight-0.2"),  # 10 + 0.2 * (6 - 10)
    pytest.param("m", 2, 90.0, 8.8, id="size-90-weight-0.8"),  # 12 + 0.8 * (8 - 12)
    # both: each bracketing size first in batch (16 at 50 %, 10 at 100 %), then in size
    pytest.param("m", 3, 75.0, 13.0, id="both-b3-s75"),
    pytest.param("m", 3, 60.0, 14.8, id="both-b3-s60"),  # 16 + 0.2 * (10 - 16)
    pytest.param("m", 4, 55.0, 19.2, id="both-b4-s55"),  # 20 + 0.1 * (12 - 20)
]


@pytest.mark.parametrize(("model", "batch", "size", "expected"), LATENCY)
def test_latency_interpolates_linearly(
    model: str, batch: int, size: float, expected: float
) -> None:
    assert TOY.latency_ms(model, batch, size) == pytest.approx(expected, rel=1e-12)


def test_measured_points_are_returned_exactly() -> None:
    for (model, size), points in TOY.latency_points.items():
        for batch, latency in points:
            assert TOY.latency_ms(model, batch, size) == latency


GAPS = [
    pytest.param("m", 0, 50.0, r"batches 1\.\.8, not 0", id="batch-below-range"),
    pytest.param("m", 9, 50.0, r"batches 1\.\.8, not 9", id="batch-above-range"),
    pytest.param(
        "m", 8, 100.0, r"size 100 measured for batches 1\.\.4, not 8", id="batch-above-s100"
    ),
    # at 75 % batch 8 is measured at 50 % but not at 100 %: no half-extrapolation either
    pytest.param(
        "m", 8, 75.0, r"size 100 measured for batches 1\.\.4, not 8", id="batch-above-one-side"
    ),
    pytest.param(
        "m", 1, 40.0, r"m measured at sizes \[50\.0, 100\.0\], not around 40", id="size-below"
    ),
    pytest.param("m", 1, 101.0, r"m measured at sizes .*, not around 101", id="size-above"),
    pytest.param("m", 1, 25.0, r"not around 25", id="allowed-size-never-measured"),
    pytest.param("n", 1, 50.0, r"n measured at sizes \[100\.0\], not around 50", id="single-size"),
    pytest.param("zz", 1, 50.0, r"profile toy has no measurements of zz", id="unknown-model"),
]


@pytest.mark.parametrize(("model", "batch", "size", "message"), GAPS)
def test_outside_the_measurements_raises_profile_gap(
    model: str, batch: int, size: float, message: str
) -> None:
    with pytest.raises(ProfileGap, match=message):
        TOY.latency_ms(model, batch, size)


def test_profile_gap_is_a_lookup_error() -> None:
    assert issubclass(ProfileGap, LookupError)


MAX_BATCH = [
    pytest.param("m", 50.0, 8, id="measured-size-50"),
    pytest.param("m", 100.0, 4, id="measured-size-100"),
    pytest.param("m", 75.0, 4, id="between-takes-min-of-8-and-4"),
    pytest.param("n", 100.0, 16, id="n-at-100"),
    pytest.param("m", 40.0, 0, id="below-measured-sizes"),
    pytest.param("m", 101.0, 0, id="above-measured-sizes"),
    pytest.param("n", 50.0, 0, id="n-below-its-only-size"),
    pytest.param("zz", 50.0, 0, id="unknown-model"),
]


@pytest.mark.parametrize(("model", "size", "expected"), MAX_BATCH)
def test_max_batch(model: str, size: float, expected: int) -> None:
    assert TOY.max_batch(model, size) == expected


def test_max_batch_is_always_answerable() -> None:
    for size in (50.0, 60.0, 75.0, 90.0, 100.0):
        top = TOY.max_batch("m", size)
        TOY.latency_ms("m", top, size)  # covered
        with pytest.raises(ProfileGap):
            TOY.latency_ms("m", top + 1, size)


UTILISATION = [
    pytest.param("m", 1, 50.0, (0.1, 0.2), id="exact-first"),
    pytest.param("m", 4, 50.0, (0.4, 0.8), id="exact-last"),
    pytest.param("m", 2, 50.0, (0.2, 0.4), id="batch-2-third-of-the-way"),
    pytest.param("m", 3, 50.0, (0.3, 0.6), id="batch-3-two-thirds"),
    pytest.param("m", 0, 50.0, (0.1, 0.2), id="clamped-below"),
    pytest.param("m", 64, 50.0, (0.4, 0.8), id="clamped-above"),
    pytest.param("m", 1, 100.0, None, id="size-without-utilisation"),
    pytest.param("m", 1, 75.0, None, id="no-interpolation-in-size"),
    pytest.param("n", 1, 100.0, None, id="model-without-utilisation"),
    pytest.param("zz", 1, 50.0, None, id="unknown-model"),
]


@pytest.mark.parametrize(("model", "batch", "size", "expected"), UTILISATION)
def test_utilisation(
    model: str, batch: int, size: float, expected: tuple[float, float] | None
) -> None:
    got = TOY.utilisation(model, batch, size)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("m", 800.0, id="override"),
        pytest.param("n", DEFAULT_MODEL_MEMORY_MB, id="default"),
        pytest.param("zz", DEFAULT_MODEL_MEMORY_MB, id="unknown-default"),
    ],
)
def test_memory_of(model: str, expected: float) -> None:
    assert TOY.memory_of(model) == expected


def test_default_model_memory_is_1500_mb() -> None:
    assert DEFAULT_MODEL_MEMORY_MB == 1500.0


# (de)serialisation -------------------------------------------------------------------------
def test_json_round_trip_is_equal() -> None:
    TOY.latency_ms("m", 3, 75.0)  # fill the cached indexes first: they must not matter
    back = DeviceProfile.from_json(TOY.to_json())
    assert back == TOY
    assert back.latency_ms("m", 3, 75.0) == pytest.approx(13.0)
    assert back.utilisation("m", 2, 50.0) == pytest.approx((0.2, 0.4))


def test_json_round_trip_through_orjson_bytes() -> None:
    raw = orjson.dumps(TOY.to_json())
    back = DeviceProfile.from_json(orjson.loads(raw))
    assert back == TOY
    assert back.memory_of("m") == 800.0
    assert back.source == "hand-made"
    # and serialising again gives the same bytes
    assert orjson.dumps(back.to_json()) == raw


def test_to_json_shape() -> None:
    data = TOY.to_json()
    assert data["sizes"] == [25.0, 50.0, 100.0]
    assert data["latency"][0] == {
        "model": "m",
        "size": 50.0,
        "points": [[1, 10.0], [2, 12.0], [4, 20.0], [8, 36.0]],
    }
    assert [(e["model"], e["size"]) for e in data["latency"]] == [
        ("m", 50.0),
        ("m", 100.0),
        ("n", 100.0),
    ]
    assert data["utilisation"] == [
        {"model": "m", "size": 50.0, "points": [[1, 0.1, 0.2], [4, 0.4, 0.8]]}
    ]


def test_from_json_without_optional_parts() -> None:
    data = {
        "name": "bare",
        "kind": "cpu",
        "sizes": [1, 2],
        "full_size": 2,
        "memory_mb": 4096,
        "latency": [{"model": "lenet", "size": 1, "points": [[1, 2], [4, 5]]}],
    }
    profile = DeviceProfile.from_json(data)
    assert profile.util_points == {}
    assert profile.model_memory_mb == {}
    assert profile.source == ""
    assert profile.latency_ms("lenet", 2, 1.0) == pytest.approx(3.0)
    assert profile.utilisation("lenet", 1, 1.0) is None


def test_merge_points_sorts_batches_per_model_and_size() -> None:
    rows = [
        ("a", 50.0, 4, 9.0),
        ("a", 50.0, 1, 3.0),
        ("b", 100.0, 2, 5.0),
        ("a", 100.0, 8, 7.0),
        ("a", 50.0, 2, 4.0),
    ]
    assert merge_points(rows) == {
        ("a", 50.0): ((1, 3.0), (2, 4.0), (4, 9.0)),
        ("a", 100.0): ((8, 7.0),),
        ("b", 100.0): ((2, 5.0),),
    }
    assert merge_points([]) == {}


def test_profile_from_merged_points_interpolates() -> None:
    points = merge_points([("a", 50.0, 4, 9.0), ("a", 50.0, 1, 3.0), ("a", 50.0, 2, 4.0)])
    profile = DeviceProfile("merged", "nvidia", (50.0,), 100.0, 1000.0, points)
    assert profile.latency_ms("a", 3, 50.0) == pytest.approx(6.5)
    assert profile.max_batch("a", 50.0) == 4


# the shipped profiles (copies of the reference ones) ----------------------------------------
def _csv_rows(name: str) -> list[dict[str, str]]:
    with (PACKAGED_PROFILES / name).open(newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def _row(name: str, model: str, batch: int, size: int) -> dict[str, str]:
    for row in _csv_rows(name):
        if (row["model"], int(row["batch"]), int(row["size_pct"])) == (model, batch, size):
            return row
    raise AssertionError(f"{name} has no row {model},{batch},{size}")


A100_MODELS = (
    "bert_large",
    "densenet121",
    "densenet169",
    "densenet201",
    "inception_v3",
    "mobilenet_v2",
    "resnet101",
    "resnet152",
    "resnet50",
    "vgg16",
    "vgg19",
)
SIZES = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)


def test_a100_class_loads() -> None:
    profile = load_profile(PACKAGED_PROFILES / "a100-class.toml")
    assert profile.name == "a100-class"
    assert profile.kind == "nvidia"
    assert profile.sizes == SIZES
    assert profile.full_size == 100.0
    assert profile.memory_mb == 24000.0
    assert profile.models() == A100_MODELS
    for model in A100_MODELS:
        assert profile.measured_sizes(model) == SIZES
        assert profile.max_batch(model, 100.0) == 64
    assert profile.source.endswith("a100-class.toml")


def test_v100_trt_loads() -> None:
    profile = load_profile(PACKAGED_PROFILES / "v100-trt.toml")
    assert profile.name == "v100-trt"
    assert profile.sizes == SIZES
    assert profile.memory_mb == 16000.0
    assert profile.models() == ("alexnet", "resnet50", "ssd", "vgg19")
    for model in profile.models():
        # 10 % is measured (batch 1 only) though the device description does not offer it
        assert profile.measured_sizes(model) == (10.0, *SIZES)


CSV_ROWS = [
    pytest.param("a100-class.toml", "a100-class.csv", "resnet50", 8, 50, id="a100-resnet50-b8-s50"),
    pytest.param(
        "a100-class.toml", "a100-class.csv", "bert_large", 64, 100, id="a100-bert-b64-s100"
    ),
    pytest.param("a100-class.toml", "a100-class.csv", "vgg16", 1, 20, id="a100-vgg16-b1-s20"),
    pytest.param("v100-trt.toml", "v100-trt.csv", "vgg19", 4, 60, id="v100-vgg19-b4-s60"),
    pytest.param("v100-trt.toml", "v100-trt.csv", "ssd", 32, 80, id="v100-ssd-b32-s80"),
    pytest.param("v100-trt.toml", "v100-trt.csv", "alexnet", 1, 100, id="v100-alexnet-b1-s100"),
]


@pytest.mark.parametrize(("toml", "csv_name", "model", "batch", "size"), CSV_ROWS)
def test_real_csv_rows_read_back_exactly(
    toml: str, csv_name: str, model: str, batch: int, size: int
) -> None:
    profile = load_profile(PACKAGED_PROFILES / toml)
    row = _row(csv_name, model, batch, size)
    assert profile.latency_ms(model, batch, float(size)) == float(row["latency_ms"])


def test_a100_known_values() -> None:
    profile = load_profile(PACKAGED_PROFILES / "a100-class.toml")
    assert profile.latency_ms("resnet50", 8, 50.0) == 6.2739
    assert profile.latency_ms("bert_large", 64, 100.0) == 75.2087
    # vgg16 batch 1 measured at 20 % (4.5352) and 40 % (2.5328): 30 % is their midpoint
    assert profile.latency_ms("vgg16", 1, 30.0) == pytest.approx((4.5352 + 2.5328) / 2)


UTIL_ROWS = [
    # a100-class-util.csv has columns dram_util_pct,l2_util_pct (in that order)
    pytest.param("a100-class.toml", "a100-class-util.csv", "vgg16", 4, 40, id="a100-util-vgg16"),
    # v100-trt.csv has l2_util_pct,dram_util_pct after the latency
    pytest.param("v100-trt.toml", "v100-trt.csv", "alexnet", 3, 50, id="v100-util-alexnet"),
]


@pytest.mark.parametrize(("toml", "csv_name", "model", "batch", "size"), UTIL_ROWS)
def test_real_utilisation_rows_become_fractions(
    toml: str, csv_name: str, model: str, batch: int, size: int
) -> None:
    profile = load_profile(PACKAGED_PROFILES / toml)
    row = _row(csv_name, model, batch, size)
    expected = (float(row["l2_util_pct"]) / 100, float(row["dram_util_pct"]) / 100)
    assert profile.utilisation(model, batch, float(size)) == expected


@pytest.mark.parametrize("toml", ["a100-class.toml", "v100-trt.toml"])
def test_real_utilisation_fractions_are_in_unit_range(toml: str) -> None:
    profile = load_profile(PACKAGED_PROFILES / toml)
    assert profile.util_points, "the profile carries utilisation"
    for points in profile.util_points.values():
        batches = [b for b, _, _ in points]
        assert batches == sorted(batches)
        for _, l2, dram in points:
            assert 0.0 <= l2 <= 1.0
            assert 0.0 <= dram <= 1.0


def test_v100_points_with_empty_utilisation_columns_have_none() -> None:
    profile = load_profile(PACKAGED_PROFILES / "v100-trt.toml")
    # the batch-1 rows at 10 % and 100 % leave l2/dram empty
    assert profile.utilisation("alexnet", 1, 100.0) is None
    assert profile.utilisation("alexnet", 1, 10.0) is None
    assert profile.util_sizes("alexnet") == (20.0, 40.0, 50.0, 60.0, 80.0)


def test_a100_every_utilisation_model_has_latency() -> None:
    profile = load_profile(PACKAGED_PROFILES / "a100-class.toml")
    util_models = {m for m, _ in profile.util_points}
    assert util_models <= set(profile.models())
    assert profile.utilisation("bert_large", 1, 50.0) is not None


V100_FULL_GPU = [
    pytest.param("alexnet", id="alexnet"),
    pytest.param("resnet50", id="resnet50"),
    pytest.param("ssd", id="ssd"),
    pytest.param("vgg19", id="vgg19"),
]


@pytest.mark.parametrize("model", V100_FULL_GPU)
def test_v100_whole_gpu_has_batch_1_only(model: str) -> None:
    profile = load_profile(PACKAGED_PROFILES / "v100-trt.toml")
    at_100 = float(_row("v100-trt.csv", model, 1, 100)["latency_ms"])
    at_80 = float(_row("v100-trt.csv", model, 1, 80)["latency_ms"])
    assert profile.latency_ms(model, 1, 100.0) == at_100
    assert profile.latency_ms(model, 1, 90.0) == pytest.approx((at_80 + at_100) / 2)
    with pytest.raises(ProfileGap, match=r"batches 1\.\.1, not 2"):
        profile.latency_ms(model, 2, 100.0)
    with pytest.raises(ProfileGap):
        profile.latency_ms(model, 2, 90.0)  # 80 % has batch 2, 100 % does not
    assert profile.max_batch(model, 100.0) == 1
    assert profile.max_batch(model, 90.0) == 1
    assert profile.max_batch(model, 80.0) == 32
    assert profile.max_batch(model, 15.0) == 1
    assert profile.max_batch(model, 5.0) == 0


# finding profiles by name ----------------------------------------------------------------
TOY_TOML = """\
name = "{name}"
vendor = "nvidia"
sizes_pct = [50, 100]
memory_mb = 8000
latency = "{name}.csv"
[model_memory_mb]
m = 640
"""
TOY_CSV = """\
# provenance: hand-written for a test
model,batch,size_pct,latency_ms,l2_util_pct,dram_util_pct
m,1,50,10.0,10,20
m,4,50,22.0,40,80
m,1,100,6.0,,
m,4,100,12.0,,
"""


def _write_toy(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text(TOY_CSV)
    toml = folder / f"{name}.toml"
    toml.write_text(TOY_TOML.format(name=name))
    return toml


def test_load_profile_of_a_written_toml(tmp_path: Path) -> None:
    profile = load_profile(_write_toy(tmp_path, "tiny"))
    assert profile.name == "tiny"
    assert profile.sizes == (50.0, 100.0)
    assert profile.memory_mb == 8000.0
    assert profile.memory_of("m") == 640.0
    assert profile.latency_ms("m", 2, 50.0) == pytest.approx(14.0)  # 10 + 1/3 * 12
    assert profile.latency_ms("m", 2, 75.0) == pytest.approx(11.0)  # (14 + 8) / 2
    assert profile.utilisation("m", 4, 50.0) == pytest.approx((0.4, 0.8))
    assert profile.utilisation("m", 4, 100.0) is None  # empty columns: not measured


def test_find_profile_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = _write_toy(tmp_path / "mine", "tiny-env")
    monkeypatch.setenv("GPULET_PROFILES_DIR", str(tmp_path / "mine"))
    profile = find_profile("tiny-env")
    assert profile.name == "tiny-env"
    assert profile.source == str(toml)
    assert profile.latency_ms("m", 4, 100.0) == 12.0


def test_env_folder_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a profile in GPULET_PROFILES_DIR shadows one of the same name anywhere else
    toml = _write_toy(tmp_path, "a100-class")
    monkeypatch.setenv("GPULET_PROFILES_DIR", str(tmp_path))
    profile = find_profile("a100-class")
    assert profile.source == str(toml)
    assert profile.models() == ("m",)


def test_find_profile_near_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPULET_PROFILES_DIR", raising=False)
    toml = _write_toy(tmp_path / "profiles", "tiny-near")
    scenario = tmp_path / "scenarios" / "s.toml"
    profile = find_profile("tiny-near", near=scenario)
    assert profile.source == str(toml)


def test_find_profile_missing_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPULET_PROFILES_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        find_profile("no-such-profile-3f9c", near=tmp_path / "scen" / "x.toml")
    message = str(caught.value)
    assert "no-such-profile-3f9c.toml" in message
    assert str(tmp_path) in message
    assert str(tmp_path / "scen" / "profiles") in message
    assert str(tmp_path / "profiles") in message
    assert "GPULET_PROFILES_DIR" in message


def test_find_profile_falls_back_to_the_shipped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPULET_PROFILES_DIR", raising=False)
    profile = find_profile("v100-trt")
    assert profile.name == "v100-trt"
    assert Path(profile.source) == PACKAGED_PROFILES / "v100-trt.toml"
