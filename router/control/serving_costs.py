"""The serving CPU per request of each served model (router + agent), which the planner charges
where serving shares the workers' cores: estimated from the request's size
(scheduling/serving_cpu.request_cost_ms), or as GPULET_SERVING_CPU_MS says."""

from __future__ import annotations

from collections.abc import Mapping

from common.models import ModelSpec
from router.scheduling.serving_cpu import request_bytes, request_cost_ms


def serving_costs(
    models: Mapping[str, ModelSpec], overrides_ms: Mapping[str, float], *, via_agent: bool = False
) -> dict[str, float]:
    """`via_agent`: batches go through the agent (GPULET_DIRECT_TO_WORKERS=false)."""
    return {name: overrides_ms.get(name, request_cost_ms(request_bytes(spec), via_agent=via_agent))
            for name, spec in models.items()}  # fmt: skip
