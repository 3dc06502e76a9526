"""router.dispatch.estimates: per (gpu-let, model) latency learned as a fixed per-batch cost plus
a per-item cost, in both directions, back toward the profile when samples stop."""

from __future__ import annotations

import pytest

from router.dispatch.estimates import DECAY_HALF_LIFE_MS, Learner

pytestmark = pytest.mark.timeout(30)

# A large model: L̂(b) = 20 + 10·b ms; a tiny one, profiled at 0.006 ms a batch (noop's figure).
LARGE = tuple(20.0 + 10.0 * b for b in range(1, 33))
TINY = tuple(0.006 for _ in range(32))


def test_before_any_sample_the_estimate_is_the_profile_with_no_hop() -> None:
    estimate = Learner(LARGE, 8).estimate
    for items in (1, 4, 8, 32):
        assert estimate.compute_ms(items) == pytest.approx(LARGE[items - 1])
        assert estimate.hop_ms(items) == 0.0
    assert estimate.factor(4) == pytest.approx(1.0)


def test_a_fixed_per_batch_cost_and_a_per_item_cost_are_both_learned() -> None:
    # The worker takes 3 ms more than profiled per batch, and the hop costs 0.5 ms + 0.2/item.
    learner = Learner(LARGE, 8)
    for i in range(200):
        items = 1 + i % 8
        compute = 3.0 + LARGE[items - 1]
        learner.record(items, compute, compute + 0.5 + 0.2 * items, now_ms=float(i))
    estimate = learner.estimate
    assert estimate.compute.fixed_ms == pytest.approx(3.0, abs=0.5)
    assert estimate.compute.slope == pytest.approx(1.0, abs=0.02)
    assert estimate.hop.fixed_ms == pytest.approx(0.5, abs=0.1)
    assert estimate.hop.slope == pytest.approx(0.2, abs=0.02)
    assert estimate.latency_ms(4) == pytest.approx(3.0 + 60.0 + 0.5 + 0.8, rel=0.02)


def test_a_tiny_profile_is_never_divided_by() -> None:
    # noop: profiled at 0.006 ms, measured at 0.3 ms a batch (the session call): the learned
    # figure is ~0.3 ms, not a factor of 50 that would be applied to anything else.
    learner = Learner(TINY, 32)
    for i in range(100):
        learner.record(1 + i % 4, 0.3, 0.8, now_ms=float(i))
    assert learner.estimate.compute_ms(1) == pytest.approx(0.3, rel=0.05)
    assert learner.estimate.latency_ms(1) == pytest.approx(0.8, rel=0.05)


def test_without_a_profile_it_learns_from_zero() -> None:
    # The static rule plans no latency: the prior is 0 ms, and the measurements are the figure.
    learner = Learner((0.0,), 1)
    assert learner.estimate.latency_ms(1) == 0.0
    assert learner.estimate.factor(1) is None
    for i in range(50):
        learner.record(1, 5.0, 6.0, now_ms=float(i))
    assert learner.estimate.compute_ms(1) == pytest.approx(5.0, rel=0.05)
    assert learner.estimate.latency_ms(1) == pytest.approx(6.0, rel=0.05)


def test_faster_than_profiled_comes_down_below_the_profile() -> None:
    learner = Learner(LARGE, 8)
    for i in range(100):
        items = 1 + i % 8
        learner.record(items, 0.5 * LARGE[items - 1], 0.5 * LARGE[items - 1], now_ms=float(i))
    assert learner.estimate.factor(4) == pytest.approx(0.5, rel=0.05)


def test_a_pessimistic_estimate_decays_back_toward_the_profile_without_samples() -> None:
    learner = Learner(LARGE, 8)
    for i in range(100):  # a burst of contention: 5x the profile
        items = 1 + i % 8
        learner.record(items, 5 * LARGE[items - 1], 5 * LARGE[items - 1], now_ms=float(i))
    assert learner.estimate.factor(4) == pytest.approx(5.0, rel=0.05)
    # No sample since (every request refused on that figure): a few half-lives later the
    # figure is back near the profile, so an idle gpu-let admits again.
    factors = [learner.refresh(100.0 + k * DECAY_HALF_LIFE_MS).factor(4) or 0.0
               for k in range(1, 13)]  # fmt: skip
    assert factors == sorted(factors, reverse=True)
    assert factors[-1] < 1.1
    # A new sample counts in full against the aged ones.
    learner.record(4, LARGE[3], LARGE[3], now_ms=100.0 + 12 * DECAY_HALF_LIFE_MS)
    assert learner.estimate.factor(4) == pytest.approx(1.0, rel=0.1)


def test_a_busy_gpulet_follows_its_recent_batches() -> None:
    # Thousands of samples do not make a figure stuck: the weight is capped, so a change of
    # conditions is followed within a few dozen batches.
    learner = Learner(LARGE, 8)
    for i in range(5_000):
        learner.record(4, LARGE[3], LARGE[3], now_ms=i * 0.1)
    for i in range(100):
        learner.record(4, 2 * LARGE[3], 2 * LARGE[3], now_ms=500.0 + i * 0.1)
    assert learner.estimate.factor(4) == pytest.approx(2.0, rel=0.05)


def test_one_models_samples_never_move_another_models_estimate() -> None:
    # Two models on one gpu-let: each has its own learner (the dispatcher keeps one per model).
    large, tiny = Learner(LARGE, 8), Learner(TINY, 32)
    before = large.estimate
    for i in range(1_000):
        tiny.record(1, 0.5, 1.0, now_ms=float(i))
    assert large.refresh(1_000.0).latency_ms(1) == pytest.approx(before.latency_ms(1))


def test_the_per_batch_cost_is_over_items_and_never_negative() -> None:
    # The worker lacks the profile's 20 ms fixed part: it takes 10 ms an item. The compute line
    # over the prior has a fixed part of about -20 ms, yet it predicts right; what is reported
    # as the cost of a batch is the hop's fixed 0.5 ms, not -19.5 ms.
    learner = Learner(LARGE, 8)
    for i in range(200):
        items = 1 + i % 8
        learner.record(items, 10.0 * items, 10.0 * items + 0.5, now_ms=float(i))
    estimate = learner.estimate
    assert estimate.compute.fixed_ms < -15.0
    for items in (1, 4, 8):
        assert estimate.latency_ms(items) == pytest.approx(10.0 * items + 0.5, rel=0.1)
    assert estimate.per_batch_ms() == pytest.approx(0.5, abs=1.0)  # the prior pulls a little
    assert estimate.to_json(4)["per_batch_ms"] == pytest.approx(estimate.per_batch_ms(), abs=1e-3)
    # A real fixed part is reported as one: 20 ms profiled + 3 ms more measured + 0.5 ms hop.
    fixed = Learner(LARGE, 8)
    for i in range(200):
        items = 1 + i % 8
        compute = 3.0 + LARGE[items - 1]
        fixed.record(items, compute, compute + 0.5, now_ms=float(i))
    assert fixed.estimate.per_batch_ms() == pytest.approx(23.5, rel=0.05)
