"""`gpulet agent`: discover devices, serve the agent API, heartbeat into Redis, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import replace

import uvloop
from aiohttp import web

from agent.api import STATE_KEY, AgentState, create_app
from agent.devices import allowed_cores, discover_cpu, discover_simulated
from agent.executor import GpuletExecutor
from agent.model_files import ModelFiles
from agent.model_prep import ModelPreparer
from agent.nvidia.backend import NvidiaSupervisor, build_nvidia_executor, publish_profile
from agent.profiling.cache import NO_PROFILE, republish_profile
from agent.simulated import SimulatedExecutor, fitted_interference
from agent.supervisor import Supervisor
from common import shared_memory
from common.cluster import AgentInfo, DeviceInfo, simulated_key
from common.errors import Unavailable
from common.outage import OutageLog
from common.profiles import find_profile
from common.serving_process import tune_serving_process
from common.settings import AgentSettings
from common.store import Store

logger = logging.getLogger(__name__)


class MissingRedis(RuntimeError):
    pass


async def heartbeat_loop(store: Store, state: AgentState, settings: AgentSettings) -> None:
    """Renew our registration forever. Redis unreachable is one WARNING per outage (OutageLog),
    not a line per beat. A beat that finds us unregistered (Redis restarted empty, or our key
    expired while we were stalled) registers us again and puts our profile rows back."""
    outage = OutageLog(logger, f"agent={state.info.agent_id} heartbeat (Redis)")
    while True:
        try:
            fresh = await store.heartbeat(state.info, state.supervisor.statuses(),
                                          settings.heartbeat_ttl_s)  # fmt: skip
            outage.ok()
            if fresh:
                logger.info("agent=%s registered again (Redis had lost it)", state.info.agent_id)
                await republish_profile(store, settings, state.info.profile_key)
        except Unavailable as exc:
            outage.failed(exc.message)
        except Exception:
            logger.exception("heartbeat failed agent=%s", state.info.agent_id)
        await asyncio.sleep(settings.heartbeat_interval_s)


async def announce_profile(
    store: Store, settings: AgentSettings, state: AgentState, preparer: ModelPreparer
) -> None:
    """Measure (or reuse) this machine's profile, then advertise its key with our registration."""
    try:
        key = (await preparer.prepare()).profile_key
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("profiling failed; the router falls back to its static rule")
        key = NO_PROFILE
    state.info = replace(state.info, profile_key=key)
    logger.info("profile ready key=%s", key)
    # The heartbeat loop advertises it; beating now only saves the router up to one interval.
    with contextlib.suppress(Unavailable):
        await store.heartbeat(state.info, state.supervisor.statuses(), settings.heartbeat_ttl_s)


def build_executor(settings: AgentSettings) -> tuple[tuple[DeviceInfo, ...], GpuletExecutor]:
    """Simulated GPUs of a profile when GPULET_SIMULATED_PROFILE is set, else NVIDIA GPUs where
    found (GPULET_DEVICE_KIND), else CPU workers."""
    if settings.simulated_profile:
        profile = find_profile(settings.simulated_profile)
        devices = discover_simulated(profile, settings.simulated_devices)
        # Slowdowns are ratios: the interference fitted on the profile holds for its
        # time-scaled copy (as the router assumes when it plans on the scaled profile).
        interference = fitted_interference(profile)
        scaled = profile.time_scaled(settings.sim_time_scale)
        return devices, SimulatedExecutor(settings, scaled, devices, interference=interference)
    nvidia = build_nvidia_executor(settings)
    if nvidia is not None:
        return nvidia.devices, nvidia
    device = discover_cpu(settings.agent_cores, settings.serving_cores)
    serving = sorted(set(allowed_cores(settings.agent_cores)) - set(device.cores))
    if serving:
        # Serving has cores of its own: the agent runs there, its workers on the rest.
        os.sched_setaffinity(0, serving)
        logger.info("serving cores=%s worker cores=%s", serving, list(device.cores))
    return (device,), Supervisor(settings)


async def serve(settings: AgentSettings, *, stop: asyncio.Event | None = None) -> None:
    if not settings.redis_url:
        raise MissingRedis(
            "the agent needs GPULET_REDIS_URL (or REDIS_URL) to join the cluster; "
            "`gpulet up` sets it for you"
        )
    stop = stop or asyncio.Event()
    devices, supervisor = build_executor(settings)
    await supervisor.start()
    store = Store.from_url(settings.redis_url, settings.redis_prefix)
    files = ModelFiles(settings, store)  # repository models: published by the router
    if isinstance(supervisor, Supervisor):
        supervisor.model_files = files
    runner: web.AppRunner | None = None
    probe = shared_memory.create_probe() if isinstance(supervisor, Supervisor) else None
    if probe is not None and (swept := shared_memory.sweep_orphans()):
        logger.info("removed %d /dev/shm files of processes gone", swept)
    beat: asyncio.Task[None] | None = None
    profiling: asyncio.Task[None] | None = None
    try:
        # Bind first, so that port 0 resolves to the real port before we advertise it.
        placeholder = AgentInfo("", "", "", 0, devices, time.time())
        runner = web.AppRunner(create_app(placeholder, supervisor), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.agent_host, settings.agent_port)
        await site.start()
        port = _bound_port(site, settings.agent_port)
        agent_id = settings.agent_id or f"{socket.gethostname()}-{port}"
        url = settings.agent_advertise_url or f"http://{settings.agent_host}:{port}"
        info = AgentInfo(
            agent_id, url, socket.gethostname(), os.getpid(), devices, time.time(),
            # Simulated GPUs are their named profile (at their time scale): nothing to measure.
            profile_key=simulated_key(settings.simulated_profile, settings.sim_time_scale)
            if settings.simulated_profile else
            # GPUs advertise their profile's key from the start: it is measured beforehand.
            supervisor.profile_key if isinstance(supervisor, NvidiaSupervisor) else None,
            # Workers read batches from /dev/shm; a simulated device runs no worker.
            shared_memory=probe,
        )  # fmt: skip
        state = runner.app[STATE_KEY]
        state.info = info
        if isinstance(supervisor, NvidiaSupervisor):
            await publish_profile(store, settings, supervisor.profile_key)
        await store.heartbeat(info, [], settings.heartbeat_ttl_s)
        beat = asyncio.create_task(heartbeat_loop(store, state, settings))
        cpu = [d for d in devices if d.kind == "cpu"]
        if cpu and settings.profile_on_start:
            state.preparer = ModelPreparer(store, settings, cpu[0], agent_id, files)
            profiling = asyncio.create_task(
                announce_profile(store, settings, state, state.preparer)
            )
        tune_serving_process()
        logger.info("agent up id=%s url=%s devices=%s", agent_id, url,
                    ",".join(f"{d.device_id}:{d.kind}" for d in devices))  # fmt: skip
        await stop.wait()
        logger.info("agent stopping id=%s", agent_id)
        with contextlib.suppress(Exception):
            await store.remove_agent(agent_id)
    finally:
        for task in (profiling, beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await supervisor.close()
        if runner is not None:
            await runner.cleanup()
        await store.close()
        if probe is not None:
            shared_memory.remove_probe(probe)
        logger.info("agent stopped")


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else configured


def run(settings: AgentSettings) -> None:
    """Blocking entry point: serve until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop=stop)

    # uvloop (installed with uvicorn[standard]) cuts the per-batch cost of this hop's HTTP
    # and unix-socket I/O; the router's uvicorn uses it too.
    uvloop.run(main())
