"""Merging a model's residual gpu-lets (the original's mergeResidue)."""

from __future__ import annotations

import pytest

from common.profiles import find_profile
from router.scheduling.elastic import Planner
from router.scheduling.fallbacks import merge_residue
from router.scheduling.types import Device, ModelDemand, PlanConfig
from router.scheduling.want import Want

pytestmark = pytest.mark.timeout(60)
PROFILE = find_profile("a100-class")
CONFIG = PlanConfig(interference=False)


def residual_want(planner: Planner, demand: ModelDemand, size: float, rate: float) -> Want:
    choice = planner.perf.residual(demand.model, size, demand.slo_ms, rate)
    assert choice is not None
    return Want(size, choice, rate, False)


def test_two_residuals_fold_into_the_larger_and_free_the_other() -> None:
    planner = Planner("gpulet", [Device(f"g{i}", "a", PROFILE) for i in range(2)], CONFIG)
    demand = ModelDemand("resnet50", "resnet50", 400.0, 108.0)
    assert planner.place(demand, residual_want(planner, demand, 60.0, 250.0)) == 250.0
    assert planner.place(demand, residual_want(planner, demand, 40.0, 150.0)) == 150.0
    homes = [s for st in planner.states for s in st.slots if s.tenants]
    assert sorted(s.size for s in homes) == [40.0, 60.0]

    assert merge_residue(planner, demand)

    homes = [s for st in planner.states for s in st.slots if s.tenants]
    assert [s.size for s in homes] == [60.0]
    assert homes[0].tenants[0].rate_rps == pytest.approx(400.0)
    assert planner.planned(demand) == pytest.approx(400.0)
    # The freed device went back to one whole, empty slot.
    assert any(st.slots and [s.size for s in st.slots] == [100.0] for st in planner.states)
    assert any("merged 2 residual gpu-lets" in line for line in planner.explanation)


def test_no_merge_when_the_larger_cannot_carry_both() -> None:
    planner = Planner("gpulet", [Device(f"g{i}", "a", PROFILE) for i in range(2)], CONFIG)
    demand = ModelDemand("resnet50", "resnet50", 2000.0, 108.0)
    big = planner.perf.saturated("resnet50", 40.0, 108.0)
    assert big is not None
    rate = big.throughput_rps * 0.9  # each nearly full: together more than one can serve
    planner.place(demand, residual_want(planner, demand, 40.0, rate))
    planner.place(demand, residual_want(planner, demand, 40.0, rate))
    before = sorted((s.size, s.tenants[0].rate_rps) for st in planner.states for s in st.slots
                    if s.tenants)  # fmt: skip
    assert not merge_residue(planner, demand)
    after = sorted((s.size, s.tenants[0].rate_rps) for st in planner.states for s in st.slots
                   if s.tenants)  # fmt: skip
    assert after == before


def test_a_single_residual_is_left_alone() -> None:
    planner = Planner("gpulet", [Device("g0", "a", PROFILE)], CONFIG)
    demand = ModelDemand("vgg16", "vgg16", 100.0, 142.0)
    planner.place(demand, residual_want(planner, demand, 40.0, 100.0))
    assert not merge_residue(planner, demand)
