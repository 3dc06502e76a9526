"""Re-planning: incremental with sizes frozen, then full re-partition, then one more device."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.interference_models import fitted_for
from common.profiles import find_profile
from router.scheduling.replan import changed_models, replan
from router.scheduling.schedulers import plan
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig

pytestmark = pytest.mark.timeout(120)

PROFILE = find_profile("a100-class")
INTERFERENCE = fitted_for("a100-class")
MIX = [("inception_v3", 66.0, 2.0), ("resnet50", 108.0, 2.0), ("vgg16", 142.0, 1.0),
       ("densenet201", 202.0, 1.0)]  # fmt: skip


def demands(rate: float, **scale: float) -> list[ModelDemand]:
    return [ModelDemand(m, m, w * rate * scale.get(m, 1.0), slo) for m, slo, w in MIX]


def pool(count: int) -> list[Device]:
    return [Device(f"gpu{i}", "offline", PROFILE) for i in range(count)]


def gpulets_of(result: Plan, model: str) -> list[tuple[str, float, int]]:
    return sorted(
        (g.device_id, g.size, m.batch) for g in result.gpulets for m in g.models if m.name == model
    )


def layout(result: Plan) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for g in result.gpulets:
        out.setdefault(g.device_id, []).append(g.size)
    return {k: sorted(v) for k, v in out.items()}


def test_changed_models_are_the_ones_that_need_more_or_fell_by_a_tenth() -> None:
    previous = plan("gpulet+int", demands(300), pool(4), PlanConfig(), INTERFERENCE)
    assert previous.feasible
    assert changed_models(previous, demands(300)) == set()
    assert changed_models(previous, demands(300, vgg16=5.0)) == {"vgg16"}
    assert "resnet50" in changed_models(previous, demands(300, resnet50=0.5))
    slower = [replace(d, slo_ms=d.slo_ms * 2) if d.name == "vgg16" else d for d in demands(300)]
    assert changed_models(previous, slower) == {"vgg16"}


def test_incremental_keeps_unchanged_models_and_every_size() -> None:
    previous = plan("gpulet+int", demands(300), pool(4), PlanConfig(), INTERFERENCE)
    # vgg16 needs a little more: it fits into what is free without touching the others.
    result = replan("gpulet+int", previous, demands(300, vgg16=1.3), pool(4),
                    PlanConfig(), INTERFERENCE)  # fmt: skip
    assert result.step == "incremental" and result.plan.feasible
    for model in ("inception_v3", "resnet50", "densenet201"):
        assert gpulets_of(result.plan, model) == gpulets_of(previous, model)
    old, new = layout(previous), layout(result.plan)
    for device, sizes in new.items():
        # Frozen: every gpu-let size existed before on that device, or is what was left free.
        free = 100.0 - sum(old.get(device, []))
        assert all(s in old.get(device, []) or s == free or s == 100.0 for s in sizes)
    assert result.plan.planned_rps("vgg16") >= 300 * 1.3 - 1e-6


def test_a_rise_the_frozen_layout_cannot_take_repartitions_fully() -> None:
    previous = plan("gpulet+int", demands(300), pool(4), PlanConfig(), INTERFERENCE)
    assert previous.devices_used < 4 or previous.feasible
    target = demands(900)
    result = replan("gpulet+int", previous, target, pool(4), PlanConfig(), INTERFERENCE)
    assert result.plan.feasible
    assert result.step in ("incremental", "full", "more_devices")
    for d in target:
        assert result.plan.planned_rps(d.name) >= d.rate_rps - 1e-6


def test_one_more_device_when_the_devices_in_use_are_not_enough() -> None:
    small = plan("gpulet+int", demands(200), pool(2), PlanConfig(), INTERFERENCE)
    assert small.feasible and small.devices_used == 2
    heavy = demands(700)
    on_two = plan("gpulet+int", heavy, pool(2), PlanConfig(), INTERFERENCE)
    assert not on_two.feasible
    result = replan("gpulet+int", small, heavy, pool(6), PlanConfig(), INTERFERENCE)
    if result.step == "more_devices":
        assert len(result.devices) == 3 and result.plan.devices_used <= 3
    else:  # 700 needs more than one extra device: the step says so
        assert result.step == "infeasible" and not result.plan.feasible


def test_a_fall_is_replanned_on_fewer_devices_used() -> None:
    busy = plan("gpulet+int", demands(900), pool(4), PlanConfig(), INTERFERENCE)
    assert busy.feasible
    result = replan("gpulet+int", busy, demands(100), pool(4), PlanConfig(), INTERFERENCE)
    assert result.plan.feasible
    assert result.plan.devices_used <= busy.devices_used


def test_ideal_is_not_a_replanner() -> None:
    previous = plan("gpulet", demands(100), pool(1))
    with pytest.raises(ValueError, match="ideal"):
        replan("ideal", previous, demands(100), pool(1))
