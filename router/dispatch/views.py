"""What the dispatcher knows of a gpu-let's plan (pure): batch sizes, duty cycle, and the prior
of each model's batch latency, from the profile the plan was made on (no profile: 0 ms until
measured; estimates.py learns the rest)."""

from __future__ import annotations

from common.profiles import DeviceProfile, ProfileGap
from router.dispatch.batching import GpuletPlanView, ModelTurn
from router.dispatch.routing import Route

PREDICTED_BATCHES = 32  # the table covers this many items; past it, `ModelTurn.predict` scales


def plan_view(route: Route, profile: DeviceProfile | None) -> GpuletPlanView:
    """Prior latencies: the profile's, x the interference the plan predicts from the gpu-let's
    neighbours. Not x the planner's latency margin: that is the planner's safety in sizing
    batches; admission keeps its own (batching.ADMIT_HEADROOM) where work may drift."""
    gpulet = route.gpulet
    margin = max(1.0, gpulet.slowdown)
    turns = []
    for model in gpulet.models:
        table: list[float] = []
        if profile is not None and gpulet.size > 0:
            for batch in range(1, PREDICTED_BATCHES + 1):
                try:
                    table.append(margin * profile.latency_ms(model.name, batch, gpulet.size))
                except ProfileGap:
                    break
        # No profile: a 0 ms prior, so only a deadline already passed drops a request until
        # the gpu-let's answers teach the dispatcher its real latency.
        # A backlog may run in batches as large as the profile measured (never past what it
        # knows: a model without a batch axis was measured at 1 only).
        turns.append(ModelTurn(model.name, max(1, model.batch_size), tuple(table) or (0.0,),
                               grow_to=len(table)))
    return GpuletPlanView(gpulet.duty_cycle_ms, tuple(turns))


def best_latency_ms(profile: DeviceProfile | None, model: str) -> float | None:
    """The fastest one request of `model` runs on any partition the profile measured: below
    it, no placement can serve the SLO (422)."""
    if profile is None:
        return None
    found = []
    for size in profile.measured_sizes(model):
        try:
            found.append(profile.latency_ms(model, 1, size))
        except ProfileGap:
            continue
    return min(found) if found else None
