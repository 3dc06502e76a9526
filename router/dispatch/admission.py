"""Admission (pure): NEVER (422: the SLO is tighter than any placement can meet), LATER (503:
the model's queues are full, retry), or OK. Every refusal carries the numbers behind it."""

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
    queued_items: int,
    queue_limit_items: int,
    retry_after_s: float,
) -> Admission:
    """`best_latency_ms`: the fastest one request of `model` can run on any allowed partition
    (batch 1, margin included); None when no profile says."""
    if best_latency_ms is not None and slo_ms < best_latency_ms:
        never: GpuletError = SloUnattainable(
            f"{model}: slo_ms {slo_ms:g} is below {best_latency_ms:.1f} ms, the fastest any "
            f"placement can run one request; ask for at least that",
            model=model,
            slo_ms=slo_ms,
            best_achievable_ms=round(best_latency_ms, 3),
        )
        return Admission(Verdict.NEVER, never, {"best_achievable_ms": best_latency_ms})
    if queued_items >= queue_limit_items:
        later: GpuletError = Overloaded(
            f"{model}: {queued_items} items queued, the limit is {queue_limit_items}",
            model=model,
            queued=queued_items,
            limit=queue_limit_items,
            retry_after_s=retry_after_s,
        )
        return Admission(Verdict.LATER, later, {"queued": queued_items})
    return ADMITTED
