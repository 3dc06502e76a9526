"""What the dispatcher knows of a gpu-let's plan (pure): batch sizes, duty cycle, and predicted
batch latency from the profile the plan was made on (no profile: batch 1, no waiting window)."""

from __future__ import annotations

from common.profiles import DeviceProfile, ProfileGap
from router.dispatch.batching import GpuletPlanView, ModelTurn
from router.dispatch.routing import Route
from router.scheduling.types import PlanConfig

PREDICTED_BATCHES = 32  # the table covers this many items; past it, `ModelTurn.predict` scales


def plan_view(route: Route, profile: DeviceProfile | None) -> GpuletPlanView:
    """Predicted latencies as the plan made them: the profile's, x the latency margin, x the
    interference predicted from the gpu-let's neighbours."""
    gpulet = route.gpulet
    margin = PlanConfig().latency_margin * max(1.0, gpulet.slowdown)
    turns = []
    for model in gpulet.models:
        table: list[float] = []
        if profile is not None and gpulet.size > 0:
            for batch in range(1, PREDICTED_BATCHES + 1):
                try:
                    table.append(margin * profile.latency_ms(model.name, batch, gpulet.size))
                except ProfileGap:
                    break
        # No prediction: 0 ms, so only a deadline already passed drops a request.
        turns.append(ModelTurn(model.name, max(1, model.batch_size), tuple(table) or (0.0,)))
    return GpuletPlanView(gpulet.duty_cycle_ms, tuple(turns))


def best_latency_ms(profile: DeviceProfile | None, model: str) -> float | None:
    """The fastest one request of `model` runs on any partition the profile measured."""
    if profile is None:
        return None
    margin = PlanConfig().latency_margin
    found = []
    for size in profile.measured_sizes(model):
        try:
            found.append(margin * profile.latency_ms(model, 1, size))
        except ProfileGap:
            continue
    return min(found) if found else None
