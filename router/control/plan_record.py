"""What a placement was planned from, stored beside it (pure): the scheduler's plan, the profile
key, the SLOs and declared rates, and a digest of the agents' devices; and the re-plans written.

A router that starts, or takes over planning, reads it and adopts the running placement as if
it had planned it: it keeps the gpu-lets (no worker restarts) and re-plans only when the rates,
the agents or the served models say so, from the same plan the writer would have used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from common.placement import Placement
from router.scheduling.types import Plan, PlannedGpulet, PlannedModel


@dataclass(frozen=True)
class PlanRecord:
    scheduler: str
    profile_key: str | None  # None: the static rule (no profile)
    slos_ms: Mapping[str, float]
    rates_rps: Mapping[str, float]  # declared rates the plan was made for ({}: none declared)
    inputs_digest: str  # of the agents and profile keys (inputs_digest())
    plan: Plan | None = None
    reason: str = "agents"
    step: str = "initial"

    def to_json(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "profile_key": self.profile_key,
            "slos_ms": dict(self.slos_ms),
            "rates_rps": dict(self.rates_rps),
            "inputs_digest": self.inputs_digest,
            "plan": None if self.plan is None else plan_to_json(self.plan),
            "reason": self.reason,
            "step": self.step,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanRecord:
        plan = data.get("plan")
        return cls(
            scheduler=str(data["scheduler"]),
            profile_key=None if data.get("profile_key") is None else str(data["profile_key"]),
            slos_ms={str(k): float(v) for k, v in data.get("slos_ms", {}).items()},
            rates_rps={str(k): float(v) for k, v in data.get("rates_rps", {}).items()},
            inputs_digest=str(data.get("inputs_digest", "")),
            plan=None if plan is None else plan_from_json(plan),
            reason=str(data.get("reason", "agents")),
            step=str(data.get("step", "initial")),
        )


def inputs_digest(inputs: object) -> str:
    """A stable digest of what a fresh plan is made from (agents' ids and devices, profile
    keys): frozen dataclasses and tuples, whose repr is the same in every router."""
    return hashlib.sha256(repr(inputs).encode()).hexdigest()[:32]


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    return Plan(
        scheduler=str(data["scheduler"]),
        feasible=bool(data["feasible"]),
        gpulets=tuple(
            PlannedGpulet(
                device_id=str(g["device_id"]),
                size=float(g["size"]),
                models=tuple(PlannedModel(**m) for m in g["models"]),
                duty_cycle_ms=float(g["duty_cycle_ms"]),
                occupancy=float(g["occupancy"]),
                slowdown=float(g.get("slowdown", 1.0)),
            )
            for g in data["gpulets"]
        ),
        devices_used=int(data["devices_used"]),
        explanation=tuple(data.get("explanation", ())),
        shortfall_rps={str(k): float(v) for k, v in data.get("shortfall_rps", {}).items()},
    )


@dataclass(frozen=True)
class ReplanEvent:
    """One placement written, for /v1/cluster and the load generator's plot."""

    version: int
    at_s: float  # time.time()
    reason: str  # "agents" | "rise" | "fall"
    step: str  # the planner's step: "initial", "incremental", "full", "more_devices", "static"
    serving_at_s: float | None = None  # time.time() when every model had switched to it


@dataclass(frozen=True)
class Wanted:
    """A placement to deploy, why, and what the controller adopts once it is written."""

    placement: Placement
    reason: str
    step: str
    plan: Plan | None = None  # the scheduler's plan behind it (None: the static rule)
    inputs: object = None  # the agents and profiles a fresh plan was made for
