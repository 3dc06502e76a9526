"""What agents report about themselves: their devices and the state of their gpulets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GpuletState = Literal["starting", "ready", "restarting", "failed", "stopping"]

# Agents of simulated GPUs advertise profile_key "sim:<profile name>" (or "sim:<name>*<k>" when
# run k times slower than the profile, see `DeviceProfile.time_scaled`): a shared profile, loaded
# by name, where CPU agents advertise the store key of the profile they measured.
SIMULATED_KEY = "sim:"
SCALE_MARK = "*"


def simulated_key(profile: str, time_scale: float = 1.0) -> str:
    return f"{SIMULATED_KEY}{profile}" + (f"{SCALE_MARK}{time_scale:g}" if time_scale != 1 else "")


def parse_simulated_key(key: str) -> tuple[str, float] | None:
    """(profile name, time scale) of a simulated agent's key; None for any other key."""
    if not key.startswith(SIMULATED_KEY):
        return None
    name, mark, scale = key.removeprefix(SIMULATED_KEY).partition(SCALE_MARK)
    return name, float(scale) if mark else 1.0


# CPU agents measure their own profile and advertise its store key, "cpu:<machine key>"; they
# measure more models when the router loads one (POST /v1/models on the agent).
CPU_KEY = "cpu:"


def measures_own_profile(key: str | None) -> bool:
    return bool(key) and str(key).startswith(CPU_KEY)


# Agents of real GPUs told to plan on a shared profile (GPULET_NVIDIA_PROFILE) advertise
# "profile:<name>": loaded by name like a simulated agent's, at its own speed.
NAMED_KEY = "profile:"


def named_key(profile: str) -> str:
    return f"{NAMED_KEY}{profile}"


def parse_named_key(key: str) -> tuple[str, float] | None:
    """(profile name, time scale 1) of a shared profile's key, as `parse_simulated_key` gives
    for simulated agents; None for any other key."""
    if not key.startswith(NAMED_KEY):
        return None
    return key.removeprefix(NAMED_KEY), 1.0


# A CPU device's `sharing`: whether the router and agent (serving) run on its cores, which the
# planner then charges for (router/scheduling/serving_cpu.py), or on cores of their own.
SERVING_SHARED = "serving-shared"
DEDICATED = "dedicated"


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    kind: str  # "cpu" | "nvidia" | "simulated"
    cores: tuple[int, ...]  # for kind "cpu": the core ids this device may use
    memory_bytes: int = 0
    # The partition sizes this device offers, in its kind's unit (nvidia: % of the GPU); empty:
    # whatever the profile allows (cpu: 1..len(cores)).
    sizes: tuple[float, ...] = ()
    # How gpulets share it (nvidia): "mps", "mig" or "time-sliced" (MPS unusable: whole-GPU
    # gpulets only); cpu: SERVING_SHARED or DEDICATED; empty for other kinds.
    sharing: str = ""
    note: str = ""  # for people: the GPU, and why it shares as it does

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "cores": list(self.cores),
            "memory_bytes": self.memory_bytes,
            "sizes": list(self.sizes),
            "sharing": self.sharing,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceInfo:
        return cls(
            device_id=str(data["device_id"]),
            kind=str(data["kind"]),
            cores=tuple(int(c) for c in data.get("cores", ())),
            memory_bytes=int(data.get("memory_bytes", 0)),
            sizes=tuple(float(s) for s in data.get("sizes", ())),
            sharing=str(data.get("sharing", "")),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    url: str
    hostname: str
    pid: int
    devices: tuple[DeviceInfo, ...]
    started_at_s: float
    # Store key of the profile this agent measured (None while it is still measuring).
    profile_key: str | None = None
    # Its /dev/shm probe (common.shared_memory): a router that sees it sends batches that way.
    shared_memory: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "profile_key": self.profile_key,
            "shared_memory": self.shared_memory,
            "agent_id": self.agent_id,
            "url": self.url,
            "hostname": self.hostname,
            "pid": self.pid,
            "devices": [d.to_json() for d in self.devices],
            "started_at_s": self.started_at_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentInfo:
        return cls(
            agent_id=str(data["agent_id"]),
            url=str(data["url"]),
            hostname=str(data.get("hostname", "")),
            pid=int(data.get("pid", 0)),
            devices=tuple(DeviceInfo.from_json(d) for d in data.get("devices", ())),
            started_at_s=float(data.get("started_at_s", 0.0)),
            profile_key=data.get("profile_key"),
            shared_memory=data.get("shared_memory"),
        )


@dataclass(frozen=True)
class GpuletStatus:
    gpulet_id: str
    state: GpuletState
    models: tuple[str, ...]
    cores: tuple[int, ...]
    pid: int | None
    restarts: int
    pending: int
    error: str | None = None
    engine: str | None = None  # what runs its models, once its worker is ready
    gpu_memory_bytes: int = 0  # GPU memory its worker holds after warm-up (0: none or unknown)
    # The ready worker's own unix socket: a router on this host sends it batches there, past
    # the agent; None: only through the agent.
    direct_socket: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "gpulet_id": self.gpulet_id,
            "state": self.state,
            "models": list(self.models),
            "cores": list(self.cores),
            "pid": self.pid,
            "restarts": self.restarts,
            "pending": self.pending,
            "error": self.error,
            "engine": self.engine,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "direct_socket": self.direct_socket,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuletStatus:
        return cls(
            gpulet_id=str(data["gpulet_id"]),
            state=data["state"],
            models=tuple(str(m) for m in data.get("models", ())),
            cores=tuple(int(c) for c in data.get("cores", ())),
            pid=None if data.get("pid") is None else int(data["pid"]),
            restarts=int(data.get("restarts", 0)),
            pending=int(data.get("pending", 0)),
            error=data.get("error"),
            engine=data.get("engine"),
            gpu_memory_bytes=int(data.get("gpu_memory_bytes", 0)),
            direct_socket=data.get("direct_socket"),
        )
