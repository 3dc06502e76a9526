"""A hand-made device profile for scheduler rule tests: every expectation can be worked by hand."""

from __future__ import annotations

from collections.abc import Sequence

from common.interference import Corunner
from common.profiles import DeviceProfile
from router.scheduling.elastic import Planner
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig

SIZES = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
M_SLOPE_MS = {20.0: 2.0, 40.0: 0.5, 50.0: 0.375, 60.0: 0.275, 80.0: 0.1875, 100.0: 0.075}
M_FIXED_MS = 4.0
F_COST_MS = {20.0: 1.0, 40.0: 0.94, 50.0: 0.91, 60.0: 0.9, 80.0: 0.89, 100.0: 0.88}
G_COST_MS = {20.0: 1.0, 40.0: 0.97, 50.0: 0.94, 60.0: 0.91, 80.0: 0.88, 100.0: 0.85}
MODEL_MB = 1500.0


def _points(
    latency: dict[float, float], fixed: float
) -> dict[float, tuple[tuple[int, float], ...]]:
    # Rounded so that e.g. 4 + 0.275·32 is stored as 12.8, not 12.800000000000001.
    return {
        s: tuple((b, round(fixed + slope * b, 9)) for b in range(1, 33))
        for s, slope in latency.items()
    }


def hand_profile(memory_mb: float = 24000.0) -> DeviceProfile:
    points: dict[tuple[str, float], tuple[tuple[int, float], ...]] = {}
    for model, table, fixed in (
        ("m", M_SLOPE_MS, M_FIXED_MS),
        ("f", F_COST_MS, 0.0),
        ("g", G_COST_MS, 0.0),
    ):
        for size, pts in _points(table, fixed).items():
            points[(model, size)] = pts
    return DeviceProfile(
        name="hand",
        kind="nvidia",
        sizes=SIZES,
        full_size=100.0,
        memory_mb=memory_mb,
        latency_points=points,
        model_memory_mb={"m": MODEL_MB, "f": MODEL_MB, "g": MODEL_MB},
    )


HAND = hand_profile()
EXACT = PlanConfig(latency_margin=1.0)


def devices(count: int, profile: DeviceProfile = HAND) -> list[Device]:
    return [Device(f"d{i}", "agent", profile) for i in range(count)]


def demand(name: str, rate_rps: float, slo_ms: float, model: str = "m") -> ModelDemand:
    return ModelDemand(name, model, rate_rps, slo_ms)


def layout(planner: Planner) -> list[list[tuple[float, tuple[str, ...]]]]:
    """Per device: (slot size, names of its tenants), in slot order."""
    return [
        [(slot.size, tuple(t.demand.name for t in slot.tenants)) for slot in state.slots]
        for state in planner.states
    ]


def gpulets_of(result: Plan) -> list[tuple[str, float, tuple[str, ...]]]:
    return [(g.device_id, g.size, tuple(m.name for m in g.models)) for g in result.gpulets]


class FixedInterference:
    """Slowdown `alpha` for every model with a neighbour on its device; 1 when alone."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float:
        return self.alpha if neighbours else 1.0
