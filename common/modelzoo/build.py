"""Build the zoo's missing or stale ONNX files, one process at a time per model directory.

Entry point for `gpulet` commands and tests that need models; torch is imported only here, lazily,
so a host without the `models` extra gets a clear message instead of an ImportError.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from common.models import CATALOG
from common.modelzoo.cache import missing_or_stale

logger = logging.getLogger(__name__)

LOCK_NAME = ".build.lock"
# Threads torch may use while building: the box has 2 cores and may be serving at the same time;
# a build is a one-off, so it can be slow rather than starve the server.
BUILD_TORCH_THREADS = 1
INSTALL_HINT = "pip install -e '.[models]'  (installs torch==2.13.0 and onnx)"


def build_missing(
    model_dir: Path, names: Sequence[str], *, progress: bool = True, force: bool = False
) -> list[str]:
    """Export each of `names` whose cached ONNX file is missing or stale (all of them if `force`).

    Returns the names built, in the order given. Holds an exclusive lock on
    `model_dir/.build.lock` meanwhile, so concurrent callers build each model once.
    """
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(sorted(CATALOG))}")
    names = list(dict.fromkeys(names))  # drop repeats, keep order
    if not force and not missing_or_stale(model_dir, names):
        return []
    try:
        from common.modelzoo.export import export_model
    except ImportError as exc:
        # Only torch and onnx come from the `models` extra; any other ImportError is a real bug.
        if exc.name is None or exc.name.split(".")[0] not in {"torch", "onnx"}:
            raise
        raise RuntimeError(
            f"building the model zoo needs {exc.name}, which is not installed; run: {INSTALL_HINT}"
        ) from exc
    model_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(model_dir / LOCK_NAME):
        # Re-check under the lock: another process may have built them while we waited.
        todo = names if force else missing_or_stale(model_dir, names)
        with _torch_threads(BUILD_TORCH_THREADS), _BuildProgress(enabled=progress) as shown:
            for name in todo:
                result = export_model(model_dir, name, on_step=functools.partial(shown.step, name))
                shown.finish(name, f"done, {result.onnx_bytes / 1e6:.1f} MB")
                logger.info(
                    "built model=%s bytes=%d export_s=%.2f verify_s=%.2f max_abs_diff=%.2g",
                    name,
                    result.onnx_bytes,
                    result.export_s,
                    result.verify_s,
                    result.max_abs_diff,
                )
    return todo


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BuildProgress:
    """One line per model on stderr: its name, current step and time spent (no-op if disabled)."""

    def __init__(self, *, enabled: bool) -> None:
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<14}"),
            TextColumn("{task.fields[step]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _BuildProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def step(self, name: str, step: str) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(name, total=None, step=step)
        self._bar.update(self._tasks[name], step=step)

    def finish(self, name: str, summary: str) -> None:
        self.step(name, summary)
        self._bar.stop_task(self._tasks[name])  # freezes its elapsed time
