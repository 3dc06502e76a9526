"""What the planner takes and returns: demands, devices, config, and the plan with its reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.profiles import DeviceProfile


@dataclass(frozen=True)
class ModelDemand:
    name: str  # the served name (a scenario's `instance`, else the model)
    model: str  # the model in the device profile
    rate_rps: float
    slo_ms: float


@dataclass(frozen=True)
class Device:
    device_id: str
    agent_id: str
    profile: DeviceProfile


@dataclass(frozen=True)
class PlanConfig:
    # Every latency estimate is multiplied by this (the original's "Latency Ratio" 1.1).
    latency_margin: float = 1.1
    max_batch: int = 32  # the original's MAX_BATCH
    # Demand left unplaced below this is ignored (the original used 15 req/s at GPU scale;
    # 0 means a feasible plan covers every request per second).
    rate_slack_rps: float = 0.0
    # Models whose planned throughput falls under this share of demand are re-planned once.
    retry_threshold: float = 0.85
    max_gpulets_per_device: int = 2  # the original's two
    # When no plan with `max_gpulets_per_device` is feasible, also try as many gpu-lets per
    # device as the kind allows (full size / smallest size): on only where it plans better.
    more_gpulets: bool = True
    max_models_per_gpulet: int = 3  # temporal sharing of up to 3 models in one gpu-let
    interference: bool = True
    allow_split: bool = True  # False: whole devices only (temporal sharing)
    allow_temporal_sharing: bool = True
    memory_fraction: float = 0.9  # usable share of device memory
    # Policy knobs of the elastic planner. `compare_fits` > 1: with interference on, compare
    # that many fitting slots and keep the one whose device serves most; `whole_knee`: the
    # knee may be the whole device (splitting then only where it pays after interference).
    compare_fits: int = 1
    whole_knee: bool = False
    # A model whose best split of one device serves less than this multiple of the whole
    # device gets whole devices: splitting it would only buy interference. 0 turns it off.
    min_split_gain: float = 0.0
    # Plan under each policy variant and keep the best plan (fewest devices when feasible,
    # least unmet demand when not).
    portfolio: bool = True


@dataclass(frozen=True)
class PlannedModel:
    name: str
    model: str
    batch: int
    rate_rps: float  # the throughput this gpulet is planned to give the model
    latency_ms: float  # predicted worst-case latency: queueing one duty cycle + execution
    slo_ms: float


@dataclass(frozen=True)
class PlannedGpulet:
    device_id: str
    size: float
    models: tuple[PlannedModel, ...]
    duty_cycle_ms: float
    occupancy: float  # share of the duty cycle spent executing
    slowdown: float = 1.0  # predicted interference factor alpha applied to its latencies


@dataclass(frozen=True)
class Plan:
    scheduler: str
    feasible: bool
    gpulets: tuple[PlannedGpulet, ...]
    devices_used: int
    explanation: tuple[str, ...] = ()
    shortfall_rps: dict[str, float] = field(default_factory=dict)  # unmet demand per model

    def planned_rps(self, name: str) -> float:
        return sum(m.rate_rps for g in self.gpulets for m in g.models if m.name == name)
