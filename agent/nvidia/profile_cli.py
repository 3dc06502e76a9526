"""`gpulet profile --nvidia`: measure one GPU's profile under real MPS partitions, write it in the
shared/profiles format, and keep it where an nvidia agent finds it (Redis and the disk cache,
under the key the agent advertises).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

# Only the parser is built on every `gpulet` command: everything else loads when --nvidia runs.
if TYPE_CHECKING:
    from agent.nvidia.nvml import GpuFacts
    from common.profiles import DeviceProfile
    from common.settings import AgentSettings


def add_arguments(profile: argparse.ArgumentParser) -> None:
    group = profile.add_argument_group("GPU (with --nvidia)")
    group.add_argument("--nvidia", action="store_true",
                       help="profile an NVIDIA GPU under MPS instead of CPU core sets")  # fmt: skip
    group.add_argument("--gpu", default=None,
                       help="GPU index or UUID (default: the first outside MIG mode)")  # fmt: skip
    group.add_argument("--sizes", default=None,
                       help="MPS sizes in %% (default: GPULET_MPS_SIZES)")  # fmt: skip
    group.add_argument("--batches", default="1,2,4,8,16,32", help="batch sizes")
    group.add_argument("--pairs", type=int, default=6,
                       help="co-located pairs for the interference fit (0: none)")  # fmt: skip
    group.add_argument("--name", default=None, help="profile name (default: from the GPU)")
    group.add_argument("--out", type=Path, default=Path("."),
                       help="folder for NAME.toml, NAME.csv, NAME-interference.csv")  # fmt: skip


def pick_gpu(gpus: tuple[GpuFacts, ...], wanted: str | None) -> GpuFacts:
    from agent.nvidia.inventory import select_gpus

    candidates = select_gpus(gpus, wanted)
    usable = [g for g in candidates if not g.mig_enabled]
    if not usable:
        raise SystemExit(f"no GPU outside MIG mode among {[g.index for g in candidates]}: MPS "
                         "partitions are profiled on a whole GPU")  # fmt: skip
    return usable[0]


def run_nvidia_profile(args: argparse.Namespace) -> int:
    import asyncio
    import shlex
    import socket
    import sys
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from agent.nvidia.backend import mps_dirs, read_host_gpus
    from agent.nvidia.inventory import parse_sizes
    from agent.nvidia.mps import MpsDaemon
    from agent.nvidia.nvml import NvmlError
    from agent.nvidia.profile_grid import (
        PairPoint,
        PairResult,
        assemble_profile,
        default_name,
        gpu_profile_key,
        plan_gpu_request,
        shared_files,
        write_files,
    )
    from agent.nvidia.profile_run import GpuTarget, Point, measure_pairs, measure_solo
    from agent.profiling.cache import parse_batches
    from common.settings import AgentSettings

    settings = AgentSettings()
    err = Console(stderr=True)
    try:
        gpus, source = read_host_gpus()
        gpu = pick_gpu(gpus, args.gpu or settings.nvidia_gpus)
        request = plan_gpu_request(
            args.models, parse_sizes(args.sizes or settings.mps_sizes),
            parse_batches(args.batches), args.pairs,
        )  # fmt: skip
    except (NvmlError, ValueError) as exc:  # no GPU here, or flags naming what is not there
        raise SystemExit(f"gpulet profile --nvidia: {exc}") from None
    pipe, log = mps_dirs(settings)
    daemon = MpsDaemon(pipe, log, (gpu.uuid,))
    state = daemon.ensure()
    if not state.usable:
        err.print(f"MPS {state.reason}: partitions cannot be measured without it")
        return 2
    err.print(f"{gpu.name} ({gpu.uuid}, via {source}); MPS {state.reason}")
    target = GpuTarget({"CUDA_VISIBLE_DEVICES": gpu.uuid, **daemon.env()}, settings.gpu_engine,
                       settings.model_dir)  # fmt: skip
    bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err)  # fmt: skip
    solo_task = bar.add_task("solo", total=request.total_points)
    pair_task = bar.add_task("pairs", total=len(request.pairs))

    def shown(point: Point) -> None:
        model, size, batch, _, engine = point
        bar.update(solo_task, advance=1, description=f"{model} {size:g}% b{batch} ({engine})")

    def paired(_: PairResult | None, pair: PairPoint) -> None:
        bar.update(pair_task, advance=1, description=f"{pair.model_a}+{pair.model_b}")

    started = time.perf_counter()
    try:
        with bar:
            points, engine = measure_solo(request, target, shown)
            pairs = measure_pairs(request, target, paired)
    finally:
        daemon.stop()
    command = "gpulet " + shlex.join(sys.argv[1:])
    name = args.name or default_name(gpu)
    source_note = f"measured by `{command}` on {socket.gethostname()}"
    profile = assemble_profile(name, gpu, request.sizes, points, source_note)
    written = write_files(args.out, shared_files(profile, pairs, gpu, engine, command))
    key = gpu_profile_key(gpu, engine)
    asyncio.run(_keep(settings, key, profile, gpu, engine, request.models))
    err.print(f"{sum(len(v) for v in points.values())} points and {len(pairs)} pairs in "
              f"{time.perf_counter() - started:.0f}s on {engine}; wrote "
              f"{', '.join(str(p) for p in written)}; key {key}")  # fmt: skip
    _print_table(profile)
    return 0


async def _keep(settings: AgentSettings, key: str, profile: DeviceProfile, gpu: GpuFacts,
                engine: str, models: tuple[str, ...]) -> None:  # fmt: skip
    """Into the disk cache (which an nvidia agent loads at start) and Redis when configured."""
    import time
    from dataclasses import asdict

    from agent.profiling.cache import cache_path, write_cached
    from common.modelzoo.cache import fingerprint

    meta = {"gpu": asdict(gpu), "engine": engine, "measured_at": time.time(),
            "models": {m: {"fingerprint": fingerprint(m)} for m in models}}  # fmt: skip
    write_cached(cache_path(settings, key), profile.to_json(), meta)
    if settings.redis_url:
        from common.store import Store

        store = Store.from_url(settings.redis_url, settings.redis_prefix)
        try:
            await store.put_profile(key, profile.to_json(), meta)
        finally:
            await store.close()


def _print_table(profile: DeviceProfile) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "size %", "batch", "latency ms", "items/s")
    for (model, size), points in sorted(profile.latency_points.items()):
        for batch, latency_ms in points:
            table.add_row(model, f"{size:g}", str(batch), f"{latency_ms:.3g}",
                          f"{batch * 1000 / latency_ms:,.0f}")  # fmt: skip
    Console().print(table)
