"""Logging set-up for entry points and workers: one line per event, process name first."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", *, process_name: str = "gpulet") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)-7s {process_name} %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs cost CPU on a 2-core box and say nothing our own request logs do not.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
