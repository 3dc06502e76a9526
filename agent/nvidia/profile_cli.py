"""`gpulet profile --nvidia`: measure one GPU's profile under real MPS partitions, write it in the
common/data/profiles format, and keep it where an nvidia agent finds it (Redis and the disk cache,
under the key the agent advertises).

Where MPS cannot be used, `--sizes 100` still measures whole-GPU (time-sliced) gpu-lets, which
are all an agent offers there; smaller sizes need MPS, and asking for them says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

# Only the parser is built on every `gpulet` command: everything else loads when --nvidia runs.
if TYPE_CHECKING:
    from agent.nvidia.nvml import GpuFacts
    from agent.nvidia.profile_grid import PairResult
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
    group.add_argument("--max-seconds", type=float, default=None, metavar="S",
                       help="start no pair once S seconds have passed (the solo grid is always "
                       "measured whole); default: no limit")  # fmt: skip
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
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from agent.nvidia.backend import mps_dirs, read_host_gpus
    from agent.nvidia.inventory import WHOLE_GPU_PCT, parse_sizes
    from agent.nvidia.mps import MpsDaemon
    from agent.nvidia.nvml import NvmlError
    from agent.nvidia.profile_grid import PairPoint, plan_gpu_request
    from agent.nvidia.profile_run import GpuTarget, Point, measure_pairs, measure_solo
    from agent.profiling.cache import parse_batches
    from common.errors import BackendFailed
    from common.settings import AgentSettings

    started = time.monotonic()
    settings = AgentSettings()
    err = Console(stderr=True, soft_wrap=True)  # one message, one line: logs and scripts read it
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
    env = {"CUDA_VISIBLE_DEVICES": gpu.uuid}
    if state.usable:
        env.update(daemon.env())
        sharing = "MPS"
    elif request.sizes == (WHOLE_GPU_PCT,):
        # A whole GPU needs no MPS: it is what a time-sliced agent device offers.
        sharing = f"time-sliced (whole GPU; MPS {state.reason})"
    else:
        err.print(f"MPS {state.reason}: partitions cannot be measured without it; "
                  f"`--sizes {WHOLE_GPU_PCT:g}` measures whole-GPU (time-sliced) gpu-lets, "
                  "all an agent offers without MPS")  # fmt: skip
        return 2
    err.print(f"{gpu.name} ({gpu.uuid}, via {source}); {sharing}")
    target = GpuTarget(env, settings.gpu_engine, settings.model_dir)
    bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err)  # fmt: skip
    solo_task = bar.add_task("solo", total=request.total_points)
    pair_task = bar.add_task("pairs", total=len(request.pairs))

    def shown(point: Point) -> None:
        model, size, batch, _, engine = point
        bar.update(solo_task, advance=1, description=f"{model} {size:g}% b{batch} ({engine})")

    def paired(_: PairResult | None, pair: PairPoint) -> None:
        bar.update(pair_task, advance=1, description=f"{pair.model_a}+{pair.model_b}")

    deadline = None if args.max_seconds is None else started + args.max_seconds
    try:
        with bar:
            points, engine = measure_solo(request, target, shown)
            pairs = measure_pairs(request, target, paired, deadline=deadline)
    except BackendFailed as exc:  # a measuring process failed or stalled: its words, no trace
        err.print(f"gpulet profile --nvidia: measuring failed ({sharing}): {exc}")
        return 1
    finally:
        daemon.stop()
    files, key, profile = _write(args, settings, gpu, sharing, request.sizes, request.models,
                                 points, pairs, engine)  # fmt: skip
    cut = (f" (stopped at --max-seconds {args.max_seconds:g})"
           if len(pairs) < len(request.pairs) and deadline is not None
           and time.monotonic() >= deadline else "")  # fmt: skip
    err.print(f"{sum(len(v) for v in points.values())} points and {len(pairs)} of "
              f"{len(request.pairs)} pairs{cut} in {time.monotonic() - started:.0f}s on "
              f"{engine}; wrote {', '.join(str(p) for p in files)}; key {key}")  # fmt: skip
    _print_table(profile)
    return 0


def _write(
    args: argparse.Namespace,
    settings: AgentSettings,
    gpu: GpuFacts,
    sharing: str,
    sizes: tuple[float, ...],
    models: tuple[str, ...],
    points: dict[tuple[str, float], tuple[tuple[int, float], ...]],
    pairs: list[PairResult],
    engine: str,
) -> tuple[list[Path], str, DeviceProfile]:
    """The common/data/profiles-format files (with their provenance), the disk cache and Redis."""
    import asyncio
    import shlex
    import socket
    import sys
    from datetime import UTC, datetime

    from agent.nvidia.backend import read_host_driver
    from agent.nvidia.nvml import NvmlError
    from agent.nvidia.profile_grid import (
        Provenance,
        assemble_profile,
        default_name,
        gpu_profile_key,
        shared_files,
        write_files,
    )

    try:
        driver = read_host_driver()
    except NvmlError as exc:
        driver = f"unknown ({exc})"
    command = "gpulet " + shlex.join(sys.argv[1:])
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = args.name or default_name(gpu)
    profile = assemble_profile(name, gpu, sizes, points,
                               f"measured by `{command}` on {socket.gethostname()}")  # fmt: skip
    provenance = Provenance(command, engine, driver, when, sharing)
    written = write_files(args.out, shared_files(profile, pairs, gpu, provenance))
    key = gpu_profile_key(gpu, engine)
    asyncio.run(_keep(settings, key, profile, gpu, engine, models))
    return written, key, profile


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
