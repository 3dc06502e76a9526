"""The placement: which gpulets exist, on which device and partition, serving which models.

A `Placement` is what the scheduler decides and the router and agents act on. It is stored in
Redis as JSON with a monotonically increasing version; the router routes from a cached copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class GpuletModel:
    """One model served by a gpulet, with its planned batch size and rate."""

    name: str
    batch_size: int = 1
    planned_rps: float = 0.0


@dataclass(frozen=True)
class GpuletSpec:
    """One partition of one device running one worker process."""

    gpulet_id: str
    agent_id: str
    device_id: str
    # The partition: CPU core ids for kind "cpu"; a percentage for MPS; an instance id for MIG.
    cores: tuple[int, ...]
    models: tuple[GpuletModel, ...]
    size: float = 0.0  # in the device kind's unit (cores for "cpu")
    duty_cycle_ms: float = 0.0
    # The interference the plan predicts from the gpulets beside it (latencies x this; 1 alone):
    # the dispatcher predicts with it from the first batch on, before it has measured any.
    slowdown: float = 1.0

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def partition(self) -> tuple[object, ...]:
        """What a running gpulet is: its place and what it loaded. Batch sizes, duty cycle and
        rates are the router's business, so a re-plan that changes only those restarts nothing."""
        return (self.agent_id, self.device_id, self.cores, self.size, self.model_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "gpulet_id": self.gpulet_id,
            "agent_id": self.agent_id,
            "device_id": self.device_id,
            "cores": list(self.cores),
            "size": self.size,
            "duty_cycle_ms": self.duty_cycle_ms,
            "slowdown": self.slowdown,
            "models": [
                {"name": m.name, "batch_size": m.batch_size, "planned_rps": m.planned_rps}
                for m in self.models
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuletSpec:
        return cls(
            gpulet_id=str(data["gpulet_id"]),
            agent_id=str(data["agent_id"]),
            device_id=str(data["device_id"]),
            cores=tuple(int(c) for c in data["cores"]),
            size=float(data.get("size", 0.0)),
            duty_cycle_ms=float(data.get("duty_cycle_ms", 0.0)),
            slowdown=float(data.get("slowdown", 1.0)),
            models=tuple(
                GpuletModel(
                    name=str(m["name"]),
                    batch_size=int(m.get("batch_size", 1)),
                    planned_rps=float(m.get("planned_rps", 0.0)),
                )
                for m in data["models"]
            ),
        )


@dataclass(frozen=True)
class Placement:
    version: int
    gpulets: tuple[GpuletSpec, ...]
    # Why each gpulet has its size and models, in words a person can read.
    explanation: tuple[str, ...] = field(default=())
    unplaced: tuple[str, ...] = field(default=())

    def for_agent(self, agent_id: str) -> tuple[GpuletSpec, ...]:
        return tuple(g for g in self.gpulets if g.agent_id == agent_id)

    def gpulets_of(self, model: str) -> tuple[GpuletSpec, ...]:
        return tuple(g for g in self.gpulets if model in g.model_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "gpulets": [g.to_json() for g in self.gpulets],
            "explanation": list(self.explanation),
            "unplaced": list(self.unplaced),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(
            version=int(data["version"]),
            gpulets=tuple(GpuletSpec.from_json(g) for g in data["gpulets"]),
            explanation=tuple(str(e) for e in data.get("explanation", ())),
            unplaced=tuple(str(u) for u in data.get("unplaced", ())),
        )


EMPTY_PLACEMENT = Placement(version=0, gpulets=())

VERSION_MARK = ".v"


def carry_ids(
    wanted: Sequence[GpuletSpec], running: Sequence[GpuletSpec], version: int
) -> tuple[GpuletSpec, ...]:
    """`wanted` with ids that say what to restart: a gpulet identical in partition to a running
    one takes its id (it keeps running); any other gets an id no running gpulet has, so the new
    one can start beside the old one it replaces (marked with the version it first appears in).
    """
    free: dict[tuple[object, ...], list[str]] = {}
    for spec in running:
        free.setdefault(spec.partition(), []).append(spec.gpulet_id)
    taken = {s.gpulet_id for s in running}
    out = []
    for spec in wanted:
        same = free.get(spec.partition())
        if same:
            gpulet_id = same.pop(0)
        else:
            base = spec.gpulet_id.split(VERSION_MARK, 1)[0]
            gpulet_id = base if base not in taken else f"{base}{VERSION_MARK}{version}"
            suffix = 1
            while gpulet_id in taken:
                suffix += 1
                gpulet_id = f"{base}{VERSION_MARK}{version}_{suffix}"
        taken.add(gpulet_id)
        out.append(replace(spec, gpulet_id=gpulet_id))
    return tuple(out)
