"""The `gpulet` command: up, router, agent, status, plan, peak, loadgen, models, profile.

Settings are built here and passed down.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from common.logs import configure_logging
from common.models import CATALOG, model_names
from common.settings import AgentSettings, CommonSettings, RouterSettings

if TYPE_CHECKING:
    from common.cli.up import UpOptions
    from common.model_config import ModelConfig


def _models_arg(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; known: {model_names()}")
    return names


def _up_models(text: str | None, simulated: str | None) -> tuple[str, ...]:
    if simulated is None:
        return _models_arg(text) if text else tuple(model_names())
    from common.profiles import find_profile

    known = find_profile(simulated).models()
    names = tuple(n.strip() for n in text.split(",") if n.strip()) if text else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"profile {simulated} has no models {unknown}; it has {list(known)}")
    return names


def up_options(args: argparse.Namespace, settings: CommonSettings | None = None) -> UpOptions:
    """`gpulet up`'s flags, over a `--scenario`'s models, SLOs and devices where one is given.

    SLOs go to the router as GPULET_SLOS, times the time scale: the scenario's, else (time
    scale K != 1) every model's default, since a device K times slower needs SLOs K times
    longer for the same plan. Usage errors exit with a message that names the fix.
    """
    from common.cli.up import UpOptions
    from common.models import spec_for
    from common.scenarios import load_scenario

    scenario = None
    if args.scenario is not None:
        try:
            scenario = load_scenario(args.scenario)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"gpulet up --scenario: {exc}") from None
        if scenario.kind not in ("simulated", "cpu"):
            raise SystemExit(f"gpulet up serves simulated and cpu scenarios; {scenario.name} "
                             f"is {scenario.kind!r}")  # fmt: skip
        renamed = [m.name for m in scenario.models if m.name != m.model]
        if renamed:
            raise SystemExit(f"gpulet up serves each model once under its own name; "
                             f"{scenario.name} has instances {renamed}")  # fmt: skip
    simulated = args.simulated
    if simulated is None and scenario is not None and scenario.simulated:
        simulated = scenario.profile_name
    from_scenario = scenario is not None and scenario.simulated
    devices = args.devices if args.devices is not None else \
        (scenario.devices if scenario and from_scenario else 1)  # fmt: skip
    if devices < 1:
        raise SystemExit(f"gpulet up --devices: at least 1, not {devices}")
    if args.time_scale <= 0:
        raise SystemExit(f"--time-scale must be > 0, not {args.time_scale:g}")
    if args.time_scale != 1 and simulated is None:
        raise SystemExit("--time-scale slows simulated GPUs: add --simulated PROFILE or a "
                         "simulated --scenario")  # fmt: skip
    scenario_models = ",".join(m.model for m in scenario.models) if scenario else None
    config = _up_config(args.config, scenario is not None)
    config_models = ",".join(config.names) if config else None
    repository = args.model_repository or (settings.model_repository if settings else None)
    if repository is not None and (simulated is not None or scenario is not None):
        raise SystemExit("gpulet up --model-repository serves the folder's models on CPU (or "
                         "NVIDIA) workers; drop --simulated/--scenario")  # fmt: skip
    try:
        if repository is not None:  # its names are checked against the folder (up_repository)
            text = args.models or config_models or ""
            models = tuple(n.strip() for n in text.split(",") if n.strip())
        else:
            models = _up_models(args.models or scenario_models or config_models, simulated)
    except (argparse.ArgumentTypeError, FileNotFoundError) as exc:  # a file's names; a profile
        raise SystemExit(f"gpulet up: {exc}") from None
    slos = {m.model: m.slo_ms for m in scenario.models} if scenario else {}
    if config is not None:
        slos = config.slos_ms
    if args.time_scale != 1:
        is_sim = simulated is not None
        slos = {n: slos.get(n, spec_for(n, simulated=is_sim).default_slo_ms) for n in models}
    cores = args.agent_cores
    if cores is not None:
        from agent.devices import parse_cores

        try:
            parse_cores(cores)
        except ValueError as exc:
            raise SystemExit(f"gpulet up --agent-cores: {exc}") from None
    if cores is None and scenario is not None and scenario.kind == "cpu" and simulated is None:
        cores = _first_cores(scenario.devices)
    return UpOptions(
        args.host, args.port, models, args.agent_port,
        build=not args.no_build and simulated is None and repository is None,
        simulated=simulated, devices=devices, model_repository=repository,
        time_scale=args.time_scale,
        slos_ms={n: ms * args.time_scale for n, ms in slos.items() if n in models},
        agent_cores=cores,
        # A K times slower device carries K times fewer requests under K times longer SLOs.
        rates_rps={n: r / args.time_scale for n, r in (config.rates_rps if config else {}).items()
                   if n in models},
        keep_going=args.keep_going,
        serving_cores=_serving_cores(args.serving_cores, cores),
    )  # fmt: skip


def _serving_cores(flag: str | None, agent_cores: str | None) -> str:
    """--serving-cores, else GPULET_SERVING_CORES, checked against the cores there are."""
    from agent.devices import allowed_cores, serving_split
    from common.settings import AgentSettings

    value = flag if flag is not None else AgentSettings().serving_cores
    try:
        serving_split(allowed_cores(agent_cores), value)
    except ValueError as exc:
        raise SystemExit(f"gpulet up --serving-cores: {exc}") from None
    return value


def _up_config(path: Path | None, with_scenario: bool) -> ModelConfig | None:
    """`--config PATH`'s models, SLOs and rates; usage errors exit naming the fix."""
    from common.model_config import load_model_config

    if path is None:
        return None
    if with_scenario:
        raise SystemExit("gpulet up: give --scenario or --config, not both")
    try:
        return load_model_config(path)
    except ValueError as exc:
        raise SystemExit(f"gpulet up --config: {exc}") from None


def _first_cores(count: int) -> str:
    """The first `count` cores this process may use, as GPULET_AGENT_CORES: a cpu scenario's."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < count:
        raise SystemExit(f"the scenario wants {count} cores; this process may use {allowed}")
    return ",".join(str(c) for c in allowed[:count])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpulet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis, an agent and the router; Ctrl-C stops all")
    up.add_argument("--host", default="127.0.0.1", help="router address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="router port (default 8000)")
    up.add_argument("--models", default=None,
                    help="comma-separated models to serve (default: all; with --simulated, "
                    "the profile's)")  # fmt: skip
    up.add_argument("--agent-port", type=int, default=0, help="agent port (default: any free)")
    up.add_argument("--agent-cores", default=None, metavar="CORES",
                    help="cores the CPU agent's workers may use, e.g. '1-3' (default: all, or "
                    "a cpu scenario's first N)")  # fmt: skip
    up.add_argument("--no-build", action="store_true", help="do not build missing models")
    up.add_argument("--serving-cores", default=None, metavar="N",
                    help="cores kept for the router, agent and Redis, the workers get the "
                    "rest: a count or auto (default GPULET_SERVING_CORES, auto: 1 from 4 "
                    "cores up, else 0 and the planner charges serving's CPU instead)")  # fmt: skip
    up.add_argument("--keep-going", action="store_true",
                    help="when some models fail to load or to answer their warm-up, keep "
                    "serving the others (default: name the failures and exit 1)")  # fmt: skip
    up.add_argument("--simulated", default=None, metavar="PROFILE",
                    help="simulated GPUs of a measured profile instead of CPU workers")  # fmt: skip
    up.add_argument("--devices", type=int, default=None,
                    help="simulated GPUs (with --simulated; default 1)")  # fmt: skip
    up.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                    help="simulated GPUs run K times slower than their profile: rates / K, "
                    "SLOs x K, the same plans (default 1)")  # fmt: skip
    up.add_argument("--scenario", type=Path, default=None, metavar="PATH",
                    help="serve a scenario file's models with its SLOs (x K), on its simulated "
                    "GPUs or its cores; the flags above override it")  # fmt: skip
    up.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                    help="serve the models of a repository folder in Triton's layout "
                    "(DIR/<model>/<version>/model.onnx; default: GPULET_MODEL_REPOSITORY, else "
                    "the built-in zoo)")  # fmt: skip
    up.add_argument("--config", type=Path, default=None, metavar="PATH",
                    help="a TOML file of [[models]] with name, slo_ms and rate_rps (optional): "
                    "the models served, their SLOs (x K) and rates (/ K); --models picks among "
                    "them")  # fmt: skip

    sub.add_parser("router", help="run the router (settings from GPULET_* variables)")
    agent = sub.add_parser("agent", help="run an agent on this host (GPULET_* variables)")
    agent.add_argument("--port", type=int, default=None, help="agent port")
    agent.add_argument("--cores", default=None, help="cores to use, e.g. '0-3'")
    agent.add_argument("--simulated", default=None, metavar="PROFILE",
                       help="serve simulated GPUs of a profile, e.g. a100-class")  # fmt: skip
    agent.add_argument("--devices", type=int, default=None, help="simulated GPUs (default 1)")
    agent.add_argument("--time-scale", type=float, default=None, metavar="K",
                       help="simulated GPUs run K times slower than their profile")  # fmt: skip

    from router.scheduling.commands import add_parsers as add_planning

    add_planning(sub)

    from common.cli.operator import add_status_parser

    add_status_parser(sub)

    from loadgen.cli import add_parser as add_loadgen

    add_loadgen(sub)

    models = sub.add_parser("models", help="build or list the model zoo's ONNX files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build", help="build missing or stale models")
    build.add_argument("names", nargs="*", help="models (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    models_sub.add_parser("list", help="catalog models and whether their files are current")

    profile = sub.add_parser(
        "profile", help="measure latency per model, batch and core-set (or, --nvidia, MPS) size"
    )
    profile.add_argument("--models", type=_models_arg, default=tuple(model_names()),
                         help="comma-separated models to profile (default: all)")  # fmt: skip
    profile.add_argument("--cores", help="cores to profile, e.g. '0-3' (default: all allowed)")
    profile.add_argument("--force", action="store_true",
                         help="measure even when the stored profile matches")  # fmt: skip
    profile.add_argument("--json", metavar="PATH",
                         help="also write the profile as JSON to PATH ('-': stdout)")  # fmt: skip
    from agent.nvidia.profile_cli import add_arguments as add_gpu_profiling

    add_gpu_profiling(profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ValidationError as exc:  # a GPULET_* variable or a flag out of range: say which
        raise SystemExit(f"gpulet {args.command}: {settings_problems(exc)}") from None


def settings_problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line, each naming its GPULET_* variable."""
    return "; ".join(
        f"GPULET_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from common.cli.up import run_up

        settings = CommonSettings()
        configure_logging(settings.log_level, process_name="up")
        return run_up(up_options(args, settings), settings)
    if args.command == "router":
        from router.main import run as run_router

        router_settings = RouterSettings()
        configure_logging(router_settings.log_level, process_name="router")
        run_router(router_settings)
        return 0
    if args.command == "agent":
        from agent.main import run as run_agent

        overrides: dict[str, object] = {}
        if args.port is not None:
            overrides["agent_port"] = args.port
        if args.cores is not None:
            overrides["agent_cores"] = args.cores
        if args.simulated is not None:
            overrides["simulated_profile"] = args.simulated
        if args.devices is not None:
            overrides["simulated_devices"] = args.devices
        if args.time_scale is not None:
            overrides["sim_time_scale"] = args.time_scale
        agent_settings = AgentSettings(**overrides)  # type: ignore[arg-type]
        configure_logging(agent_settings.log_level, process_name="agent")
        run_agent(agent_settings)
        return 0
    if args.command == "status":
        from common.cli.operator import run_status

        return run_status(args)
    if args.command in ("plan", "peak"):
        from router.scheduling.commands import run as run_planning

        return run_planning(args)
    if args.command == "loadgen":
        from loadgen.cli import run as run_loadgen

        return run_loadgen(args)
    if args.command == "models":
        return _models_command(args)
    if args.command == "profile":
        return _profile_command(args)
    return 2


def _models_command(args: argparse.Namespace) -> int:
    from common.modelzoo.cache import is_current

    settings = CommonSettings()
    if args.models_command == "list":
        for name in model_names():
            state = "current" if is_current(settings.model_dir, name) else "missing or stale"
            print(f"{name:14s} {state:18s} {CATALOG[name].description}")
        print(f"model dir: {settings.model_dir}")
        return 0
    from common.modelzoo.build import build_missing

    names = args.names or model_names()
    built = build_missing(settings.model_dir, names, progress=True, force=args.force)
    print(f"built: {', '.join(built) or 'nothing (all current)'} in {settings.model_dir}")
    return 0


def _profile_command(args: argparse.Namespace) -> int:
    """Measure (or reuse the stored) profile with a progress bar on stderr; print a table."""
    if args.nvidia:
        from agent.nvidia.profile_cli import run_nvidia_profile

        return run_nvidia_profile(args)
    import asyncio
    import json
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from agent.devices import discover_cpu
    from agent.profiling.cache import DiskProfiles, cache_path, profile_key_for
    from agent.profiling.measure import ProfileStep
    from agent.profiling.profiler import ensure_profile
    from common.profiles import DeviceProfile
    from common.store import Store

    settings = CommonSettings()
    configure_logging("WARNING", process_name="profile")  # the progress bar says what happens
    device = discover_cpu(args.cores)
    err = Console(stderr=True)
    bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err)  # fmt: skip
    task = bar.add_task("profiling", total=None)
    steps: list[ProfileStep] = []

    def shown(step: ProfileStep) -> None:
        steps.append(step)
        label = f"{step.model} cores={step.cores} batch={step.batch}"
        bar.update(task, description=label, completed=step.done, total=step.total)

    # The disk cache is what this machine's agents read when they start: always write it
    # (and Redis too, when one is named).
    disk = DiskProfiles(cache_path(settings, profile_key_for(device)))

    async def run() -> DeviceProfile:
        if not settings.redis_url:
            return await ensure_profile(disk, settings, device, args.models, shown,
                                        force=args.force, agent_id="gpulet-profile")  # fmt: skip
        store = Store.from_url(settings.redis_url, settings.redis_prefix)
        try:
            key = profile_key_for(device)
            cached = await disk.profile(key)
            if await store.profile(key) is None and cached is not None:
                await store.put_profile(key, *cached)
            profile = await ensure_profile(store, settings, device, args.models, shown,
                                           force=args.force, agent_id="gpulet-profile")
            found = await store.profile(key)
            if found is not None:
                await disk.put_profile(key, *found)
            return profile
        finally:
            await store.close()

    started = time.perf_counter()
    with bar:
        profile = asyncio.run(run())
    elapsed_s = time.perf_counter() - started
    if not steps:
        err.print(f"reused the stored profile ({profile.source}); --force measures again")
    else:
        skipped = sum(1 for s in steps if s.latency_ms is None)
        err.print(f"measured {len(steps) - skipped} points in {elapsed_s:.1f}s ({skipped} "
                  f"skipped: a run would exceed the per-point budget)")  # fmt: skip
        err.print(f"stored in {disk.path}" + (f" and Redis ({settings.redis_url})"
                                               if settings.redis_url else ""))  # fmt: skip
    if args.json is not None:
        text = json.dumps(profile.to_json(), indent=2)
        if args.json == "-":
            print(text)
            return 0
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    table = Table("model", "cores", "batch", "latency ms", "items/s")
    for (model, size), points in sorted(profile.latency_points.items()):
        if model in args.models and size <= len(device.cores):
            for batch, latency_ms in points:
                table.add_row(model, f"{size:g}", str(batch), f"{latency_ms:.3g}",
                              f"{batch * 1000 / latency_ms:,.0f}")  # fmt: skip
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
