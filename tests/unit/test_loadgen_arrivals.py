"""loadgen's arrival processes, checked statistically on seeded generators; replay parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.scenarios import RateStep, Scenario, ScenarioModel
from loadgen.arrivals import (
    Arrival,
    Segment,
    gamma_times,
    parse_replay,
    poisson_times,
    rate_segments,
    read_replay,
    schedule,
    segment_times,
)

SEED = 20240611


def _cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


def _scenario(
    mode: str,
    models: tuple[ScenarioModel, ...],
    *,
    base_rps: float = 0.0,
    steps: tuple[RateStep, ...] = (),
    duration_s: float = 0.0,
) -> Scenario:
    return Scenario(
        name="t", description="", kind="simulated", profile_name=None, devices=1, mode=mode,
        step_rps=10, max_rps=1000, base_rps=base_rps, steps=steps, duration_s=duration_s,
        models=models, path=Path("t.toml"),
    )  # fmt: skip


A = ScenarioModel("a", "noop", 50.0, 2.0)
B = ScenarioModel("b", "lenet", 20.0, 1.0)


def test_poisson_rate_and_cv() -> None:
    times = poisson_times(100.0, 200.0, np.random.default_rng(SEED))
    assert abs(len(times) / 200.0 - 100.0) / 100.0 < 0.03
    assert abs(_cv(times) - 1.0) < 0.05
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= 0 and times[-1] < 200.0


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    times = gamma_times(100.0, cv, 200.0, np.random.default_rng(SEED))
    # The count of a renewal process has sd ≈ cv·sqrt(n): 2% of 20 000 is over 2 sd at cv 2.
    assert abs(len(times) / 200.0 - 100.0) / 100.0 < 0.05
    assert abs(_cv(times) - cv) / cv < 0.08


def test_gamma_rejects_non_positive_cv() -> None:
    with pytest.raises(ValueError, match="cv"):
        gamma_times(10.0, 0.0, 1.0, np.random.default_rng(SEED))


def test_zero_rate_gives_no_arrivals() -> None:
    assert len(poisson_times(0.0, 10.0, np.random.default_rng(SEED))) == 0


def test_segments_change_the_rate_at_their_bounds() -> None:
    segs = (Segment(0, 50, 100.0), Segment(50, 100, 400.0), Segment(100, 150, 0.0))
    times = segment_times(segs, np.random.default_rng(SEED))
    counts = [np.count_nonzero((times >= s.start_s) & (times < s.end_s)) for s in segs]
    assert abs(counts[0] / 50 - 100) / 100 < 0.05
    assert abs(counts[1] / 50 - 400) / 400 < 0.05
    assert counts[2] == 0
    assert np.all(np.diff(times) >= 0)


def test_trace_segments_follow_weight_base_and_multiplier() -> None:
    steps = (RateStep(0, 1.0), RateStep(60, 2.5), RateStep(120, 0.5))
    scenario = _scenario("trace", (A, B), base_rps=10, steps=steps, duration_s=150)
    segs = rate_segments(scenario, None, 150)
    assert segs["a"] == (Segment(0, 60, 20.0), Segment(60, 120, 50.0), Segment(120, 150, 10.0))
    assert [s.rate_rps for s in segs["b"]] == [10.0, 25.0, 5.0]
    # --rate replaces base_rps; a shorter run cuts the steps.
    assert rate_segments(scenario, 100, 90)["b"] == (Segment(0, 60, 100.0), Segment(60, 90, 250.0))


def test_trace_before_its_first_step_runs_at_base_rate() -> None:
    scenario = _scenario("trace", (B,), base_rps=10, steps=(RateStep(30, 3.0),))
    assert rate_segments(scenario, None, 60)["b"] == (Segment(0, 30, 10.0), Segment(30, 60, 30.0))


def test_sweep_and_fixed_rates() -> None:
    assert rate_segments(_scenario("sweep", (A, B)), 7, 10) == {
        "a": (Segment(0, 10, 14.0),),
        "b": (Segment(0, 10, 7.0),),
    }
    assert rate_segments(_scenario("fixed", (A, B)), None, 10)["a"] == (Segment(0, 10, 2.0),)
    with pytest.raises(ValueError, match="--rate"):
        rate_segments(_scenario("sweep", (A,)), None, 10)


def test_schedule_merges_models_by_weight_and_is_seeded() -> None:
    scenario = _scenario("sweep", (A, B))
    first = schedule(scenario, 100, 100, np.random.default_rng(SEED))
    again = schedule(scenario, 100, 100, np.random.default_rng(SEED))
    other = schedule(scenario, 100, 100, np.random.default_rng(SEED + 1))
    assert first == again
    assert first != other
    assert all(x.at_s <= y.at_s for x, y in zip(first, first[1:], strict=False))
    share_a = sum(1 for a in first if a.model == "a") / len(first)
    assert abs(share_a - 2 / 3) < 0.02
    assert abs(len(first) / 100 - 300) / 300 < 0.03


def test_schedule_gamma_cv_per_model() -> None:
    scenario = _scenario("sweep", (A,))
    arrivals = schedule(scenario, 50, 200, np.random.default_rng(SEED), process="gamma", cv=2.0)
    times = np.array([a.at_s for a in arrivals])
    assert abs(_cv(times) - 2.0) / 2.0 < 0.08


def test_schedule_rejects_unknown_process() -> None:
    with pytest.raises(ValueError, match="weibull"):
        schedule(_scenario("sweep", (A,)), 1, 1, np.random.default_rng(0), process="weibull")  # type: ignore[arg-type]


def test_replay_shifts_sorts_and_skips_comments() -> None:
    lines = [
        "# recorded at the edge",
        "1700000010.5, a",
        "",
        "1700000010.0 b  # first",
        "1700000012.25\ta",
    ]
    assert parse_replay(lines) == [Arrival(0.0, "b"), Arrival(0.5, "a"), Arrival(2.25, "a")]


def test_replay_relative_times_keep_their_gaps() -> None:
    assert parse_replay(["3 a", "4.5 a"]) == [Arrival(0.0, "a"), Arrival(1.5, "a")]
    assert parse_replay(["# nothing"]) == []


@pytest.mark.parametrize(
    ("line", "match"),
    [("12.0", "line 2: expected"), ("x a", "line 2: timestamp 'x'"), ("1 a b", "line 2"),
     ("nan a", "line 2: timestamp 'nan' is not finite")],
)  # fmt: skip
def test_replay_errors_name_the_line(line: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_replay(["0 a", line])


def test_read_replay_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("5 a\n6 b\nbroken\n")
    with pytest.raises(ValueError, match=r"trace\.txt line 3"):
        read_replay(path)
    path.write_text("5 a\n6 b\n")
    assert read_replay(path) == [Arrival(0.0, "a"), Arrival(1.0, "b")]
