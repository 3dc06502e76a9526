"""GPU profiles: the grid and pairs to measure, the store key, and the profile files
(read back by the loader and by the interference fit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.nvidia.nvml import GpuFacts
from agent.nvidia.profile_grid import (
    PairPoint,
    PairResult,
    Provenance,
    assemble_profile,
    default_name,
    gpu_profile_key,
    pair_grid,
    plan_gpu_request,
    shared_files,
    write_files,
)
from common.profiles import load_profile, read_csv
from router.scheduling.interference_fit import observations_from_rows

pytestmark = pytest.mark.timeout(30)

H100 = GpuFacts(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))
SIZES = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
PROVENANCE = Provenance("gpulet profile --nvidia --name h100-test", "torch-cuda", "580.159.04",
                        "2026-11-20T10:00:00Z", "MPS")  # fmt: skip


def test_request_validates_and_draws_seeded_pairs_on_profiled_splits() -> None:
    request = plan_gpu_request(["resnet18", "bert_mini", "resnet18"], SIZES, (1, 8, 32), 5)
    assert request.models == ("resnet18", "bert_mini")
    assert request.total_points == 2 * 6 * 3
    assert len(request.pairs) == 5
    assert request.pairs == plan_gpu_request(["resnet18", "bert_mini"], SIZES, (1, 8, 32), 5).pairs
    for pair in request.pairs:
        assert pair.size_a + pair.size_b == 100.0
        assert {pair.batch_a, pair.batch_b} <= {1, 8, 32}
    for bad in (dict(models=["vgg99"]), dict(sizes=[0.0]), dict(batches=[0])):
        args = {"models": ["resnet18"], "sizes": SIZES, "batches": (1,), **bad}
        with pytest.raises(ValueError):
            plan_gpu_request(**args)  # type: ignore[arg-type]


def test_pairs_need_both_sides_of_a_split_profiled() -> None:
    assert pair_grid(["resnet18"], (50.0, 100.0), (1,), 10) == (
        PairPoint("resnet18", 1, 50.0, "resnet18", 1, 50.0),
    )
    assert pair_grid(["resnet18"], (20.0, 100.0), (1,), 10) == ()  # no 80 beside the 20
    assert pair_grid(["resnet18"], SIZES, (1,), 0) == ()


def test_profile_key_names_the_gpu_kind_and_engine() -> None:
    key = gpu_profile_key(H100, "torch-cuda")
    assert key.startswith("nvidia:") and key == gpu_profile_key(H100, "torch-cuda")
    assert key != gpu_profile_key(H100, "onnxruntime-cuda")
    other = GpuFacts(1, "GPU-bbbb", H100.name, H100.memory_bytes, (9, 0))
    assert gpu_profile_key(other, "torch-cuda") == key  # same kind of GPU, another card
    assert default_name(H100) == "nvidia-h100-80gb-hbm3"


def test_shared_files_load_back_and_feed_the_interference_fit(tmp_path: Path) -> None:
    points = {
        ("resnet18", 50.0): ((1, 2.0), (8, 6.0)),
        ("resnet18", 100.0): ((1, 1.5), (8, 4.0)),
        ("bert_mini", 50.0): ((1, 1.0), (8, 3.0)),
    }
    profile = assemble_profile("h100-test", H100, (50.0, 100.0), points, "test")
    pair = PairResult(PairPoint("resnet18", 8, 50.0, "bert_mini", 1, 50.0), 9.0, 1.5, 0.2, 0.1)
    files = shared_files(profile, [pair], H100, PROVENANCE)
    assert sorted(files) == ["h100-test-interference.csv", "h100-test.csv", "h100-test.toml"]
    for text in files.values():  # each file says where it comes from, in comment lines
        assert "driver 580.159.04, engine torch-cuda, FP32, partitions by MPS, at " \
            "2026-11-20T10:00:00Z" in text
        assert "# Command: gpulet profile --nvidia --name h100-test\n" in text
    write_files(tmp_path, files)
    loaded = load_profile(tmp_path / "h100-test.toml")
    assert loaded.kind == "nvidia" and loaded.sizes == (50.0, 100.0)
    assert loaded.latency_points == profile.latency_points
    assert loaded.memory_mb == pytest.approx(80 * 1024)
    rows = read_csv(tmp_path / "h100-test-interference.csv")
    observations, skipped = observations_from_rows(loaded, rows)
    assert skipped["profile_gap"] == 0
    slowdowns = {o.target.model: o.slowdown for o in observations}
    assert slowdowns == {"resnet18": pytest.approx(9.0 / 6.0), "bert_mini": pytest.approx(1.5)}


def test_without_pairs_no_interference_file_is_named() -> None:
    profile = assemble_profile("p", H100, (100.0,), {("resnet18", 100.0): ((1, 1.0),)}, "t")
    files = shared_files(profile, [], H100, PROVENANCE)
    assert sorted(files) == ["p.csv", "p.toml"] and "interference" not in files["p.toml"]
