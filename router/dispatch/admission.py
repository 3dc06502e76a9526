"""Admission (pure): NEVER (422: the SLO is tighter than any placement can meet), LATER (503:
the router holds as many request bytes as it may, retry), or OK. Every refusal carries the
numbers behind it. Whether a gpu-let can finish the request in time is the door's question
(dispatcher.py, batching.admission_finish), asked after this."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from common.errors import GpuletError, Overloaded, SloUnattainable


class Verdict(Enum):
    OK = "ok"
    LATER = "later"
    NEVER = "never"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    error: GpuletError | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


ADMITTED = Admission(Verdict.OK)


def admit(
    model: str,
    slo_ms: float,
    best_latency_ms: float | None,
    held_bytes: int,
    request_bytes: int,
    limit_bytes: int,
    retry_after_s: float,
) -> Admission:
    """`best_latency_ms`: the fastest one request of `model` can run on any allowed partition
    (batch 1, as profiled); None when no profile says. `held_bytes`: what the router holds of
    requests admitted and not yet answered; this one would add `request_bytes`. A request
    alone is never refused for its size (the body limit bounds it)."""
    if best_latency_ms is not None and slo_ms < best_latency_ms:
        never: GpuletError = SloUnattainable(
            f"{model}: slo_ms {slo_ms:g} is below {best_latency_ms:.3g} ms, the fastest any "
            f"placement can run one request; ask for at least that",
            model=model,
            slo_ms=slo_ms,
            best_achievable_ms=round(best_latency_ms, 3),
        )
        return Admission(Verdict.NEVER, never, {"best_achievable_ms": best_latency_ms})
    if held_bytes and held_bytes + request_bytes > limit_bytes:
        later: GpuletError = Overloaded(
            f"{model}: the router holds {held_bytes} bytes of queued requests; this one "
            f"({request_bytes} bytes) would pass the limit of {limit_bytes} "
            "(GPULET_MAX_QUEUED_BYTES)",
            model=model,
            held_bytes=held_bytes,
            request_bytes=request_bytes,
            limit=limit_bytes,
            retry_after_s=retry_after_s,
        )
        return Admission(Verdict.LATER, later, {"held_bytes": held_bytes})
    return ADMITTED
