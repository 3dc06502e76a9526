"""The `gpulet` command: up, router, agent, models. Settings are built here and passed down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.logs import configure_logging
from common.models import CATALOG, model_names
from common.settings import AgentSettings, CommonSettings, RouterSettings


def _models_arg(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; known: {model_names()}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpulet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis, an agent and the router; Ctrl-C stops all")
    up.add_argument("--host", default="127.0.0.1", help="router address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="router port (default 8000)")
    up.add_argument("--models", type=_models_arg, default=tuple(model_names()),
                    help="comma-separated models to serve (default: all)")  # fmt: skip
    up.add_argument("--agent-port", type=int, default=0, help="agent port (default: any free)")
    up.add_argument("--no-build", action="store_true", help="do not build missing models")

    sub.add_parser("router", help="run the router (settings from GPULET_* variables)")
    agent = sub.add_parser("agent", help="run an agent on this host (GPULET_* variables)")
    agent.add_argument("--port", type=int, default=None, help="agent port")
    agent.add_argument("--cores", default=None, help="cores to use, e.g. '0-3'")

    models = sub.add_parser("models", help="build or list the model zoo's ONNX files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build", help="build missing or stale models")
    build.add_argument("names", nargs="*", help="models (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    models_sub.add_parser("list", help="catalog models and whether their files are current")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from common.up import UpOptions, run_up

        settings = CommonSettings()
        configure_logging(settings.log_level, process_name="up")
        options = UpOptions(args.host, args.port, args.models, args.agent_port, not args.no_build)
        return run_up(options, settings)
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
        agent_settings = AgentSettings(**overrides)  # type: ignore[arg-type]
        configure_logging(agent_settings.log_level, process_name="agent")
        run_agent(agent_settings)
        return 0
    if args.command == "models":
        return _models_command(args)
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


if __name__ == "__main__":
    sys.exit(main())
