"""The serving CPU a plan must leave to the router and agent on a CPU host (pure).

On a CPU host the router, the agent and their codec run on the very cores the workers are
planned on, unless serving has cores of its own (the agent's GPULET_SERVING_CORES; its device
then says `sharing = "dedicated"`). Every request costs that serving some CPU: parsing and
decoding the body, framing the batch for the worker (and, where batches go through the agent,
the agent's hop), encoding the answer. A plan that gives the workers every core and ignores it
promises a peak the host cannot deliver (cpu-pair served 0.10 of its predicted peak on 2 cores).

So the planner charges it: at per-model rates r_m and serving costs c_m (ms of CPU a request),
serving keeps busy
    u = Σ r_m · c_m / 1000 / cores          (a share of the shared cores)
and the workers run on what is left: every latency of a shared CPU device × 1 / (1 - u)
(processor sharing). A plan with u past MAX_SERVING_SHARE is infeasible.

c_m comes from the request's size: SERVING_FIXED_MS + SERVING_MS_PER_MB × its body in MB (the
base64 form: 4/3 of the tensor bytes). Both were measured on the reference 2-core machine,
router and agent process CPU over base64 noop, mobilenet_v2 and resnet18 requests
(`python benchmarks/serving_cpu.py`, benchmarks/results/serving_cpu.json);
GPULET_SERVING_CPU_MS overrides them per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from common.interference import InterferenceModel
from common.models import ModelSpec
from router.scheduling.schedulers import plan
from router.scheduling.types import Device, ModelDemand, Plan, PlanConfig

# Router + agent CPU per request, whatever it carries: HTTP, the dispatcher, the batch to the
# worker's own socket. benchmarks/serving_cpu.py, 3 repeats: 0.36 [0.35-0.37] ms fixed,
# 1.77 [1.73-1.83] ms per MB (0.8 + 2.5 while every batch went through the agent's hop).
SERVING_FIXED_MS = 0.35
# ... and per MB of request body (base64 parse and decode, the frame the worker reads).
SERVING_MS_PER_MB = 1.8
# What the agent's hop adds where batches go through it (GPULET_DIRECT_TO_WORKERS=false), the
# same benchmark's via-agent runs less its direct ones, side by side: 0.42 [0.40-0.46] ms and
# 0.43 [0.28-0.61] ms per MB.
AGENT_HOP_FIXED_MS = 0.4
AGENT_HOP_MS_PER_MB = 0.4
# Serving may take at most this share of the shared cores: past it, the workers' tails grow
# without bound (processor sharing at utilisation near 1).
MAX_SERVING_SHARE = 0.8


def request_bytes(spec: ModelSpec) -> int:
    """Bytes of one item's input tensors (batch 1); an unknown dimension counts as 1."""
    return sum(math.prod(max(1, d) for d in t.item_shape) * np.dtype(t.dtype).itemsize
               for t in spec.inputs)  # fmt: skip


def request_cost_ms(tensor_bytes: int, *, via_agent: bool = False) -> float:
    """Serving CPU of one request of a batch-1 input of `tensor_bytes` bytes, sent base64;
    `via_agent`: its batch goes through the agent's hop, not straight to the worker."""
    body_mb = tensor_bytes * 4 / 3 / 1e6
    cost = SERVING_FIXED_MS + SERVING_MS_PER_MB * body_mb
    return cost + (AGENT_HOP_FIXED_MS + AGENT_HOP_MS_PER_MB * body_mb if via_agent else 0.0)


def serving_share(demands: Sequence[ModelDemand], cost_ms: Mapping[str, float],
                  cores: float) -> float:  # fmt: skip
    """The share of `cores` serving takes at the demands' rates."""
    if cores <= 0:
        return 0.0
    busy = sum(d.rate_rps * cost_ms.get(d.model, 0.0) for d in demands) / 1000
    return busy / cores


def charged(
    devices: Sequence[Device],
    demands: Sequence[ModelDemand],
    cost_ms: Mapping[str, float],
    shared: frozenset[str],
) -> tuple[list[Device], float] | None:
    """The devices as the workers get them, with the serving share u; None when serving alone
    would take more than MAX_SERVING_SHARE of the shared cores. `shared`: ids of the CPU
    devices serving runs on."""
    cores = sum(d.profile.full_size for d in devices if d.device_id in shared)
    share = serving_share(demands, cost_ms, cores)
    if share == 0:
        return list(devices), 0.0
    if share > MAX_SERVING_SHARE:
        return None
    slower = 1 / (1 - share)
    return [replace(d, profile=d.profile.time_scaled(slower)) if d.device_id in shared else d
            for d in devices], share  # fmt: skip


def plan_serving(
    scheduler: str,
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    config: PlanConfig,
    interference: InterferenceModel,
    cost_ms: Mapping[str, float],
    shared: frozenset[str],
) -> Plan:
    """`schedulers.plan` on the devices as serving leaves them to the workers."""
    got = charged(devices, demands, cost_ms, shared)
    if got is None:
        cores = sum(d.profile.full_size for d in devices if d.device_id in shared)
        share = serving_share(demands, cost_ms, cores)
        why = (f"{scheduler}: serving these rates would take {share:.0%} of the cores the "
               f"workers share with the router and agent (at most {MAX_SERVING_SHARE:.0%})")
        return Plan(scheduler, False, (), 0, (why,), {d.name: d.rate_rps for d in demands})
    workers, share = got
    result = plan(scheduler, demands, workers, config, interference)
    if share > 0:
        note = (f"serving CPU: {share:.0%} of the shared cores at these rates; worker latencies "
                f"planned x{1 / (1 - share):.2f}")
        result = replace(result, explanation=(*result.explanation, note))
    return result


def charged_pool(
    devices: Sequence[Device],
    demands: Sequence[ModelDemand],
    cost_ms: Mapping[str, float],
    shared: frozenset[str],
) -> list[Device]:
    """The devices as the workers get them for a re-plan; serving past its cap leaves the
    shared cores at the cap's speed, so the re-plan finds the rates infeasible there."""
    got = charged(devices, demands, cost_ms, shared)
    if got is not None:
        return got[0]
    slowest = 1 / (1 - MAX_SERVING_SHARE)
    return [replace(d, profile=d.profile.time_scaled(slowest)) if d.device_id in shared else d
            for d in devices]  # fmt: skip
