"""Settings for each process, read from `GPULET_*` environment variables in entry points only.

Every field maps to `GPULET_<FIELD>` (e.g. `router_port` -> `GPULET_ROUTER_PORT`); the Redis URL
also accepts plain `REDIS_URL`. Nothing reads the environment at import time: `__main__`-level
code builds these and passes them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_dir() -> Path:
    return Path(platformdirs.user_cache_dir("gpulet")) / "models"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPULET_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GPULET_REDIS_URL", "REDIS_URL"),
        description="Redis to use; unset: start redis-server from PATH, else embedded Valkey",
    )
    redis_prefix: str = Field(default="gpulet:", description="prefix of every Redis key we own")
    model_dir: Path = Field(default_factory=default_model_dir, description="ONNX model cache")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    models: str = Field(
        default="", description="comma-separated models to serve; empty: every catalog model"
    )
    simulated_profile: str | None = Field(
        default=None, description="serve simulated GPUs of this measured profile, not CPU workers"
    )
    model_repository: Path | None = Field(
        default=None,
        description="a model repository in Triton's layout (DIR/<model>/<version>/model.onnx); "
        "unset: the built-in model zoo. On an agent: where it finds the repository's files "
        "locally (else it fetches them from the router)",
    )
    max_model_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="repository model files larger than this are refused"
    )

    def named_models(self) -> list[str]:
        """GPULET_MODELS as given (empty: none named)."""
        return [n.strip() for n in self.models.split(",") if n.strip()]

    def model_list(self) -> list[str]:
        from common.models import CATALOG

        if self.model_repository is not None:
            return self.named_models()  # checked against the repository by its reader
        names = self.named_models() or sorted(CATALOG)
        unknown = [n for n in names if n not in CATALOG]
        if unknown and self.simulated_profile:
            from common.profiles import find_profile

            known = set(find_profile(self.simulated_profile).models())
            unknown = [n for n in unknown if n not in known]
        if unknown:
            raise ValueError(
                f"GPULET_MODELS names unknown models {unknown}; the catalog has {sorted(CATALOG)}"
            )
        return names


class RouterSettings(CommonSettings):
    router_host: str = "127.0.0.1"
    router_port: int = 8000
    router_id: str | None = Field(
        default=None,
        description="this router's identity in Redis (routers sharing a cluster register and "
        "elect a planner); default: <hostname>-<port>-<random>",
    )
    router_advertise_url: str | None = Field(
        default=None,
        description="URL agents reach the router at, to fetch repository model files "
        "(default from host:port)",
    )
    max_batch: int = Field(default=64, ge=1, description="largest batch one request may carry")
    scheduler: str = Field(
        default="gpulet+int",
        description="planner: gpulet+int, gpulet, greedy, temporal, ideal, or static (no profile)",
    )
    slos: str = Field(
        default="",
        description="SLO per model in ms, e.g. 'resnet50=108,vgg16=142'; others keep the default",
    )
    serving_cpu_ms: str = Field(
        default="",
        description="router + agent CPU per request in ms, per model, e.g. 'resnet18=4.5': what "
        "the planner charges against CPU cores serving shares with the workers; others are "
        "estimated from the request's size",
    )
    rates: str = Field(
        default="",
        description="expected req/s per model, e.g. 'resnet18=20,noop=500'; empty: plan for the "
        "largest equal rate the devices can carry",
    )
    max_deadline_ms: float = Field(
        default=60_000.0, gt=0, description="cap on any request's deadline, whatever its slo_ms"
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, description="larger request bodies are answered 413"
    )
    deadline_factor: float = Field(
        default=2.0,
        gt=0,
        description="a request's deadline is its slo_ms (else the model default) times this",
    )
    max_queued_bytes: int = Field(
        default=1 << 30,
        ge=1,
        description="input bytes the router may hold in requests admitted and not yet answered "
        "(queued or running) before 503 overloaded; time is bounded by admission (a request is "
        "admitted only where it is predicted to finish within its SLO)",
    )
    batching: Literal["work-conserving", "duty-cycle"] = Field(
        default="work-conserving",
        description="work-conserving: an idle gpu-let sends what is queued at once, a busy one "
        "lets the next batch grow until the running one ends; duty-cycle: a batch waits until "
        "full or until its oldest request has waited the planned duty cycle",
    )
    router_backlog_s: float = Field(
        default=2.0,
        gt=0,
        description="inference requests in flight are capped at what the router's event loop "
        "clears in this long, at its measured capacity (at least 64): the excess is answered "
        "503 at once instead of waiting in the socket backlog",
    )
    agent_connections: int = Field(default=256, ge=1, description="pooled connections per agent")
    shared_memory: bool = Field(
        default=True,
        description="send batches of 64 KiB and more to agents that share this host's /dev/shm "
        "through it, not over HTTP (false: always over HTTP)",
    )
    direct_to_workers: bool = Field(
        default=True,
        description="send batches for workers on this host to their own unix sockets, past "
        "the agent's HTTP hop (false: always through the agent)",
    )
    reconcile_interval_s: float = Field(
        default=1.0, gt=0, description="how often the router checks agents and the placement"
    )
    replan_epoch_s: float = Field(
        default=20.0,
        ge=0,
        description="follow measured rates: re-plan at once when one rises, at most this often "
        "when one falls; 0 keeps the first plan",
    )
    retry_after_s: float = Field(default=1.0, gt=0, description="Retry-After on 503 answers")
    admin_token: str | None = Field(
        default=None,
        description="when set (non-empty), model load/unload need `Authorization: Bearer` with "
        "it; inference stays open",
    )
    model_load_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="model load waits this long for a ready gpu-let, and unload this long for "
        "the model's requests to drain, before answering 503",
    )


class AgentSettings(CommonSettings):
    agent_id: str | None = Field(default=None, description="default: hostname-port")

    def model_list(self) -> list[str]:
        """The models to prepare at start: catalog names, or repository models the router
        publishes (the agent resolves those through Redis); empty: the catalog's."""
        from common.models import CATALOG

        return self.named_models() or ([] if self.model_repository else sorted(CATALOG))
    agent_host: str = "127.0.0.1"
    agent_port: int = 8100
    agent_advertise_url: str | None = Field(
        default=None, description="URL the router uses to reach this agent (default from host:port)"
    )
    agent_cores: str | None = Field(
        default=None, description="cores this agent may use, e.g. '0-3' or '0,2'; default: all"
    )
    serving_cores: str = Field(
        default="auto",
        description="cores kept for serving (the agent itself, and under `gpulet up` the router "
        "and Redis), the workers get the rest: a count, or auto (1 from 4 cores up, else 0; with "
        "0 the planner charges serving's CPU against the workers' cores)",
    )
    profile_on_start: bool = Field(
        default=True, description="measure (or reuse) the CPU profile the planner needs"
    )
    profile_batches: str = Field(
        default="1,2,4,8,16,32", description="batch sizes the agent profiles its models at"
    )
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    heartbeat_ttl_s: float = Field(
        default=5.0, gt=0, description="an agent silent this long is gone"
    )
    worker_start_timeout_s: float = Field(default=120.0, gt=0)
    worker_stop_timeout_s: float = Field(default=5.0, gt=0)
    worker_ping_interval_s: float = Field(default=1.0, gt=0)
    worker_ping_timeout_s: float = Field(default=10.0, gt=0)
    max_pending_per_gpulet: int = Field(
        default=512, ge=1, description="batches queued at a worker before 503 overloaded"
    )
    simulated_devices: int = Field(default=1, ge=1, description="how many simulated GPUs")
    sim_time_scale: float = Field(
        default=1.0,
        gt=0,
        description="simulated GPUs run this many times slower than their profile (every "
        "latency x k): rates / k, SLOs x k, the same plans",
    )
    device_kind: Literal["auto", "cpu", "nvidia"] = Field(
        default="auto",
        description="auto: NVIDIA GPUs when NVML (or nvidia-smi) finds any and a GPU engine is "
        "installed, else CPU core sets; cpu; nvidia (fail if none)",
    )
    nvidia_gpus: str | None = Field(
        default=None, description="GPUs to use, by index or UUID, e.g. '0,2'; default: all"
    )
    mps_sizes: str = Field(
        default="20,40,50,60,80,100",
        description="MPS gpu-let sizes in % of a GPU (the original's; reference/gpulet-paper.md "
        "section 1.3)",
    )
    mps_pipe_dir: Path | None = Field(
        default=None,
        description="MPS control daemon pipe directory; default: this agent's own, "
        "$TMPDIR/gpulet-mps-<uid>/pipe. Name a running daemon's (e.g. /tmp/nvidia-mps) to "
        "share it",
    )
    mps_log_dir: Path | None = Field(
        default=None, description="MPS daemon log directory; default: beside the pipe directory"
    )
    gpu_memory_limit_mb: float = Field(
        default=0.0, ge=0, description="per-gpulet GPU memory cap under MPS; 0: none"
    )
    gpu_engine: Literal["auto", "onnxruntime", "torch"] = Field(
        default="auto",
        description="GPU worker engine: onnxruntime (CUDA EP, needs onnxruntime-gpu), torch "
        "(the zoo's nets on CUDA), or auto (onnxruntime when it has CUDA, else torch)",
    )
    nvidia_profile: str | None = Field(
        default=None,
        description="plan NVIDIA devices on this shared profile (NAME.toml, e.g. a100-class) "
        "instead of the one `gpulet profile --nvidia` measured here",
    )
