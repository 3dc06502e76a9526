"""The agent on an NVIDIA host: find the GPUs, make MPS usable or say why not, and supervise GPU
workers bound to their GPU, MIG instance or MPS share.

`build_nvidia_executor` is what agent.main calls; it returns None when this host should serve
CPU core sets instead (GPULET_DEVICE_KIND=auto and no GPU, or no GPU engine installed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from agent.nvidia.engines import engine_installed, expected_engine
from agent.nvidia.inventory import Inventory, build_inventory, needs_mps, parse_sizes, select_gpus
from agent.nvidia.mps import MpsDaemon
from agent.nvidia.nvml import GpuFacts, NvmlError, driver_version, load_nvml, read_gpus
from agent.nvidia.profile_grid import gpu_profile_key
from agent.nvidia.smi import read_driver_smi, read_gpus_smi
from agent.nvidia.worker_env import gpulet_env
from agent.profiling.cache import cache_path, read_cached
from agent.supervisor import Supervisor
from agent.worker import WorkerSetup
from common.cluster import DeviceInfo, named_key
from common.placement import GpuletSpec
from common.settings import AgentSettings

if TYPE_CHECKING:
    from common.store import Store

logger = logging.getLogger(__name__)

GpuReader = Callable[[], tuple[tuple[GpuFacts, ...], str]]


class NoGpu(RuntimeError):
    """GPULET_DEVICE_KIND=nvidia on a host where no NVIDIA GPU can serve."""


def read_host_gpus() -> tuple[tuple[GpuFacts, ...], str]:
    """The GPUs and where we learnt of them: NVML, else nvidia-smi. Raises NvmlError."""
    try:
        nvml = load_nvml()
    except NvmlError as first:
        try:
            return read_gpus_smi(), "nvidia-smi"
        except NvmlError as second:
            raise NvmlError(f"{first}; {second}") from second
    try:
        return read_gpus(nvml), "NVML"
    finally:
        nvml.nvmlShutdown()


def read_host_driver() -> str:
    """The NVIDIA driver's version, from NVML else nvidia-smi. Raises NvmlError."""
    try:
        nvml = load_nvml()
    except NvmlError as first:
        try:
            return read_driver_smi()
        except NvmlError as second:
            raise NvmlError(f"{first}; {second}") from second
    try:
        return driver_version(nvml)
    finally:
        nvml.nvmlShutdown()


def mps_dirs(settings: AgentSettings) -> tuple[Path, Path]:
    """Our pipe and log directories: short paths (the daemon's unix socket lives in the pipe
    directory, and socket paths stop at 108 bytes), one per user."""
    base = Path(tempfile.gettempdir()) / f"gpulet-mps-{os.getuid()}"
    pipe = settings.mps_pipe_dir or base / "pipe"
    return pipe, settings.mps_log_dir or pipe.parent / "log"


class NvidiaSupervisor(Supervisor):
    """The supervisor with each worker bound to its device; stops the MPS daemon it started."""

    def __init__(
        self,
        settings: AgentSettings,
        inventory: Inventory,
        daemon: MpsDaemon | None,
        profile_key: str,
    ) -> None:
        super().__init__(settings, worker_setup=self.setup_for)
        self.inventory = inventory
        self.daemon = daemon
        self.profile_key = profile_key  # what the agent advertises for the router's planner

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        return self.inventory.devices

    def setup_for(self, spec: GpuletSpec) -> WorkerSetup:
        slot = self.inventory.slots.get(spec.device_id)
        if slot is None:
            have = sorted(self.inventory.slots)
            raise ValueError(f"gpulet {spec.gpulet_id} is placed on device {spec.device_id}, "
                             f"which this agent lacks (it has {have})")  # fmt: skip
        # A size of 0 (no planner behind it) means the whole GPU.
        env = gpulet_env(slot, spec.size or 100.0, self.settings.gpu_memory_limit_mb)
        return WorkerSetup(tuple(sorted(env.items())), self.settings.gpu_engine)

    async def close(self) -> None:
        await super().close()  # workers first: `quit` waits for the daemon's clients
        if self.daemon is not None:
            await asyncio.to_thread(self.daemon.stop)


def start_nvidia(settings: AgentSettings, gpus: tuple[GpuFacts, ...]) -> NvidiaSupervisor:
    """Inventory the chosen GPUs, with an MPS daemon for those not in MIG mode."""
    chosen = select_gpus(gpus, settings.nvidia_gpus)
    sizes = parse_sizes(settings.mps_sizes)
    daemon = None
    state = None
    uuids = needs_mps(chosen)
    if uuids:
        pipe, log = mps_dirs(settings)
        daemon = MpsDaemon(pipe, log, uuids)
        state = daemon.ensure()
    pipe_dir = str(daemon.pipe_dir) if daemon is not None else None
    inventory = build_inventory(chosen, sizes, state, pipe_dir)
    for warning in inventory.warnings:
        logger.warning("%s", warning)
    for device in inventory.devices:
        level = logging.WARNING if device.sharing == "time-sliced" else logging.INFO
        logger.log(level, "device %s sharing=%s sizes=%s: %s", device.device_id, device.sharing,
            ",".join(f"{s:g}" for s in device.sizes), device.note)  # fmt: skip
    if settings.nvidia_profile:
        key = named_key(settings.nvidia_profile)
    else:
        key = gpu_profile_key(chosen[0], expected_engine(settings.gpu_engine)) if chosen else ""
        if len({(g.name, g.memory_bytes) for g in chosen}) > 1:
            logger.warning("GPUs of different kinds; planning all on %s's profile", chosen[0].name)
    return NvidiaSupervisor(settings, inventory, daemon, key)


def build_nvidia_executor(
    settings: AgentSettings, read: GpuReader = read_host_gpus
) -> NvidiaSupervisor | None:
    """The NVIDIA supervisor, or None where this agent should serve CPU core sets."""
    if settings.device_kind == "cpu":
        return None
    strict = settings.device_kind == "nvidia"
    try:
        gpus, source = read()
    except NvmlError as exc:
        if strict:
            raise NoGpu(f"GPULET_DEVICE_KIND=nvidia, but {exc}") from exc
        logger.info("no NVIDIA GPU (%s); serving CPU core sets", exc)
        return None
    if not strict and gpus and not engine_installed(settings.gpu_engine):
        logger.warning(
            "%d NVIDIA GPU(s) found, but no GPU engine is installed (onnxruntime-gpu, or torch "
            "with CUDA); serving CPU core sets. Install one, or set GPULET_DEVICE_KIND=nvidia "
            "to insist", len(gpus),
        )  # fmt: skip
        return None
    logger.info("%d NVIDIA GPU(s) found through %s", len(gpus), source)
    supervisor = start_nvidia(settings, gpus) if gpus else None
    if supervisor is None or not supervisor.devices:
        if supervisor is not None and supervisor.daemon is not None:
            supervisor.daemon.stop()
        if strict:
            raise NoGpu("GPULET_DEVICE_KIND=nvidia, but no GPU can serve (see the log above)")
        return None
    return supervisor


async def publish_profile(store: Store, settings: AgentSettings, key: str) -> None:
    """Make a GPU profile measured here earlier (disk cache) available under `key` in Redis."""
    if not key.startswith("nvidia:") or await store.profile(key) is not None:
        return
    path = cache_path(settings, key)
    try:
        await store.put_profile(key, *read_cached(path))
        logger.info("GPU profile loaded from %s", path)
    except FileNotFoundError:
        logger.warning(
            "no GPU profile for key %s: measure one with `gpulet profile --nvidia`, or name a "
            "shared one with GPULET_NVIDIA_PROFILE (e.g. a100-class); until then the router "
            "has no profile to plan these GPUs with", key,
        )  # fmt: skip
    except (OSError, orjson.JSONDecodeError, KeyError) as exc:
        logger.warning("GPU profile cache %s unreadable: %s", path, exc)
