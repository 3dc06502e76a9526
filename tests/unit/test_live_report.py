"""`GET /v1/plan`'s predictions (re-derived from the placement) agree with the planner's own, and
the live peak is `plan_live`'s equal-rate search on the agents' devices."""

from __future__ import annotations

import pytest

from common.cluster import AgentInfo, DeviceInfo
from common.interference import NoInterference
from common.profiles import find_profile
from router.scheduling.live import plan_live
from router.scheduling.live_report import live_peak, predicted_gpulets

pytestmark = pytest.mark.timeout(60)
PROFILE = find_profile("a100-class")
SLOS_MS = {"resnet50": 108.0, "vgg16": 142.0, "densenet121": 100.0, "inception_v3": 120.0}


def sim_agent(devices: int) -> AgentInfo:
    sims = tuple(DeviceInfo(f"sim{i}", "simulated", ()) for i in range(devices))
    return AgentInfo("a", "http://agent", "host", 1, sims, 0.0, "sim:a100-class")


@pytest.mark.parametrize(
    ("devices", "models", "rate_rps"),
    [
        pytest.param(1, ("resnet50", "vgg16"), 50.0, id="one-model-per-gpulet"),
        pytest.param(1, tuple(SLOS_MS), 20.0, id="time-shared-gpulet"),
        pytest.param(2, ("resnet50", "vgg16"), None, id="peak-with-time-sharing"),
    ],
)
def test_predictions_match_the_planners_bounds(
    devices: int, models: tuple[str, ...], rate_rps: float | None
) -> None:
    slos = {m: SLOS_MS[m] for m in models}
    rates = {m: rate_rps for m in models} if rate_rps else {}
    live = plan_live([sim_agent(devices)], PROFILE, slos, rates, "gpulet+int",
                     interference=NoInterference())  # fmt: skip
    assert live is not None and live.plan.feasible
    predicted = predicted_gpulets(live.placement, PROFILE, slos, NoInterference())
    shared = [g for g in predicted if len(g["models"]) > 1]
    assert shared or rate_rps == 50.0  # the time-shared cases do share
    # Gpu-let by gpu-let, in the placement's order (by device, larger first; stable): a device
    # may hold two gpu-lets of one size and model, so (device, size, model) names none.
    planned = sorted(live.plan.gpulets, key=lambda g: (g.device_id, -g.size))
    for plan_gpulet, gpulet in zip(planned, predicted, strict=True):
        assert (plan_gpulet.device_id.split("/", 1)[1], plan_gpulet.size) == \
            (gpulet["device_id"], gpulet["size"])  # fmt: skip
        assert gpulet["occupancy"] == pytest.approx(plan_gpulet.occupancy, abs=1e-3)
        for plan_model, model in zip(plan_gpulet.models, gpulet["models"], strict=True):
            assert model["name"] == plan_model.name
            assert model["worst_latency_ms"] == pytest.approx(plan_model.latency_ms, abs=0.01)
            assert model["worst_latency_ms"] <= model["slo_ms"]


def test_without_a_profile_there_is_no_prediction() -> None:
    live = plan_live([sim_agent(1)], PROFILE, {"vgg16": 142.0}, {}, "gpulet")
    assert live is not None
    predicted = predicted_gpulets(live.placement, None, {"vgg16": 142.0}, NoInterference())
    assert predicted and all(g["occupancy"] is None for g in predicted)
    assert {m["worst_latency_ms"] for g in predicted for m in g["models"]} == {None}
    # The plan itself is still shown: sizes, batches and rates from the placement.
    assert [g["size"] for g in predicted] == [g.size for g in live.placement.gpulets]


def test_the_live_peak_is_the_equal_rate_search_on_the_agents_devices() -> None:
    slos = {"resnet50": 108.0, "vgg16": 142.0}
    agents = [sim_agent(2)]
    peak = live_peak(agents, PROFILE, slos, "gpulet", NoInterference())
    expected = plan_live(agents, PROFILE, slos, {}, "gpulet")
    assert expected is not None and expected.rate_rps
    assert peak["peak_rps"] == expected.rate_rps
    assert (peak["agents"], peak["devices"]) == (1, 2)
    served = {m["name"] for g in peak["plan"]["gpulets"] for m in g["models"]}
    assert served == set(slos)
    # Twice the devices carry more.
    assert live_peak([sim_agent(4)], PROFILE, slos, "gpulet", NoInterference())["peak_rps"] > \
        peak["peak_rps"]  # fmt: skip


@pytest.mark.parametrize(
    ("scheduler", "profile", "why"),
    [("static", PROFILE, "does not plan by rate"), ("gpulet", None, "still measuring")],
)
def test_no_peak_says_why(scheduler: str, profile: object, why: str) -> None:
    peak = live_peak([sim_agent(1)], profile, {"vgg16": 142.0}, scheduler,  # type: ignore[arg-type]
                     NoInterference())  # fmt: skip
    assert peak["peak_rps"] is None and why in peak["why"]
