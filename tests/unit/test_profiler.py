"""The profiler's pure part: the plan, the run budget on fake timings, and the reuse keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from agent.profiling.plan import (
    BATCHES,
    MachineFacts,
    RunBudget,
    machine_key,
    measure_series,
    merge_profiles,
    next_batch_fits,
    plan_request,
    profile_key,
    runs_for,
    stale_models,
)
from common.profiles import DeviceProfile, ProfileGap

pytestmark = pytest.mark.timeout(30)

BUDGET = RunBudget(warmup_runs=2, repeat_runs=5, point_budget_ms=2000.0)


def linear(per_item_ms: float, calls: list[int]) -> Callable[[int], float]:
    """A fake `run_once`: latency grows linearly with batch; records every call."""

    def run_once(batch: int) -> float:
        calls.append(batch)
        return per_item_ms * batch

    return run_once


# the plan ---------------------------------------------------------------------------------------
def test_plan_covers_every_size_of_the_device_and_every_batch() -> None:
    request = plan_request(["noop", "lenet", "noop"], cores=(4, 5, 6))
    assert request.models == ("noop", "lenet")
    assert request.sizes == (1, 2, 3)
    assert request.batches == BATCHES == (1, 2, 4, 8, 16, 32)
    assert request.total_points == 2 * 3 * 6
    assert [request.cores_for(s) for s in request.sizes] == [(4,), (4, 5), (4, 5, 6)]


def test_plan_takes_a_subset_of_sizes_in_order() -> None:
    assert plan_request(["lenet"], (0, 1), sizes=[2, 1, 2]).sizes == (1, 2)


@pytest.mark.parametrize(
    ("models", "sizes", "message"),
    [
        (["alexnet"], None, "unknown models"),
        ([], None, "at least one model"),
        (["lenet"], [0], "must lie in 1..2"),
        (["lenet"], [3], "must lie in 1..2"),
    ],
)
def test_plan_rejects_what_cannot_be_measured(
    models: list[str], sizes: list[int] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_request(models, (0, 1), sizes=sizes)


# the budget -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first_ms", "expected"),
    [
        (0.01, (1, 5)),  # fast: all W-1 extra warm-ups and R timed runs
        (100.0, (1, 5)),  # 19 runs left fit 1 + 5
        (400.0, (0, 4)),  # 4 runs left: timed runs first
        (800.0, (0, 1)),  # 1 run left
        (1600.0, (0, 1)),  # none left: still one timed run after the cold one
        (5000.0, (0, 1)),
    ],
)
def test_runs_for_fits_the_point_budget(first_ms: float, expected: tuple[int, int]) -> None:
    assert runs_for(first_ms, BUDGET) == expected


def test_next_batch_is_predicted_linearly() -> None:
    assert next_batch_fits(8, 800.0, 16, BUDGET)  # 1600 ms ≤ 2000
    assert not next_batch_fits(16, 1600.0, 32, BUDGET)  # 3200 ms > 2000


def test_slow_model_stops_before_a_run_would_exceed_the_budget() -> None:
    calls: list[int] = []
    seen: list[tuple[int, float | None]] = []
    points = measure_series(
        linear(100.0, calls), BATCHES, BUDGET, lambda b, ms: seen.append((b, ms))
    )
    assert points == ((1, 100.0), (2, 200.0), (4, 400.0), (8, 800.0), (16, 1600.0))
    assert seen[-1] == (32, None)  # reported, so a progress bar completes
    assert 32 not in calls
    # cold + extra warm-ups + timed runs, as runs_for decides from the cold run
    assert [calls.count(b) for b in (1, 2, 4, 8, 16)] == [7, 7, 5, 2, 2]


def test_fast_model_measures_every_batch_with_full_repeats() -> None:
    calls: list[int] = []
    points = measure_series(linear(0.05, calls), BATCHES, BUDGET)
    assert [b for b, _ in points] == list(BATCHES)
    assert all(calls.count(b) == 7 for b in BATCHES)


def test_one_run_over_budget_still_measures_batch_one_only() -> None:
    calls: list[int] = []
    points = measure_series(linear(3000.0, calls), BATCHES, BUDGET)
    assert points == ((1, 3000.0),)
    assert calls == [1, 1]


def test_the_statistic_is_the_median_of_the_timed_runs_after_warm_ups() -> None:
    # cold 50, one warm-up 9, then five timed runs with one outlier
    timings: Iterator[float] = iter([50.0, 9.0, 3.0, 1.0, 2.0, 40.0, 2.5])
    points = measure_series(lambda batch: next(timings), [1], BUDGET)
    assert points == ((1, 2.5),)


def test_a_skipped_batch_is_a_profile_gap_not_a_guess() -> None:
    points = measure_series(linear(100.0, []), BATCHES, BUDGET)
    profile = DeviceProfile("p", "cpu", (1.0,), 1.0, 1000.0, {("m", 1.0): points})
    assert profile.max_batch("m", 1.0) == 16
    with pytest.raises(ProfileGap):
        profile.latency_ms("m", 32, 1.0)


# the keys ---------------------------------------------------------------------------------------
FACTS = MachineFacts(cpu_model="AMD EPYC", cores=2, ort_version="1.22.0")


@pytest.mark.parametrize(
    "changed",
    [
        replace(FACTS, cpu_model="Intel Xeon"),
        replace(FACTS, cores=1),
        replace(FACTS, ort_version="1.23.0"),
    ],
)
def test_machine_key_changes_with_each_machine_fact(changed: MachineFacts) -> None:
    assert machine_key(FACTS) == machine_key(replace(FACTS))
    assert machine_key(changed) != machine_key(FACTS)


def test_profile_key_changes_with_a_fingerprint_or_the_machine() -> None:
    prints = {"lenet": "a", "noop": "b"}
    key = profile_key(machine_key(FACTS), prints)
    assert key == profile_key(machine_key(FACTS), dict(reversed(prints.items())))
    assert key != profile_key(machine_key(FACTS), {**prints, "lenet": "c"})
    assert key != profile_key(machine_key(replace(FACTS, cores=1)), prints)


def meta_for(**fingerprints: str) -> dict[str, object]:
    entry = {"sizes": [1, 2], "batches": list(BATCHES), "measured_at": 0.0}
    return {"models": {m: {**entry, "fingerprint": fp} for m, fp in fingerprints.items()}}


def test_stale_models_are_the_changed_missing_or_undercovered_ones() -> None:
    request = plan_request(["lenet", "noop", "resnet18"], (0, 1))
    prints = {"lenet": "a", "noop": "b", "resnet18": "r"}
    assert stale_models(None, request, prints) == request.models
    assert stale_models(meta_for(lenet="a", noop="b", resnet18="r"), request, prints) == ()
    assert stale_models(meta_for(lenet="a", noop="OLD"), request, prints) == ("noop", "resnet18")
    narrower = plan_request(["lenet"], (0, 1), sizes=[1])
    assert stale_models(meta_for(lenet="a"), narrower, prints) == ()
    wider = plan_request(["lenet"], (0, 1, 2))  # sizes 1..3, stored only 1..2
    assert stale_models(meta_for(lenet="a"), wider, prints) == ("lenet",)
    fewer_batches = plan_request(["lenet"], (0, 1), batches=[1, 2])
    assert stale_models(meta_for(lenet="a"), fewer_batches, prints) == ("lenet",)


def test_merge_keeps_valid_stored_models_and_replaces_measured_ones() -> None:
    def profile(points: dict[tuple[str, float], tuple[tuple[int, float], ...]]) -> DeviceProfile:
        return DeviceProfile("p", "cpu", (1.0, 2.0), 2.0, 1000.0, points)

    stored = profile({("lenet", 1.0): ((1, 1.0),), ("noop", 1.0): ((1, 0.1),),
                      ("resnet18", 1.0): ((1, 40.0),)})  # fmt: skip
    measured = profile({("lenet", 1.0): ((1, 2.0),)})
    merged = merge_profiles(stored, ["noop"], measured)
    assert dict(merged.latency_points) == {("lenet", 1.0): ((1, 2.0),), ("noop", 1.0): ((1, 0.1),)}
    assert merge_profiles(None, ["noop"], measured).latency_points == measured.latency_points


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        ({"onnxruntime": "1.20.1"}, "1.20.1"),
        ({"onnxruntime-gpu": "1.20.0"}, "1.20.0"),  # the GPU wheel in place of the CPU one
        ({}, "absent"),
    ],
)
def test_machine_facts_name_whichever_onnxruntime_wheel_is_installed(
    monkeypatch: pytest.MonkeyPatch, installed: dict[str, str], expected: str
) -> None:
    import importlib.metadata

    from agent.profiling import measure as profile_measure

    def version(distribution: str) -> str:
        if distribution not in installed:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return installed[distribution]

    monkeypatch.setattr(profile_measure.importlib.metadata, "version", version)
    assert profile_measure.read_machine_facts(2).ort_version == expected
