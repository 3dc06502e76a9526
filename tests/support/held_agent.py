"""An agent client whose batches finish when the test says, and a clock the test sets: for
driving the dispatcher step by step without workers or sleeps."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from common import frames
from common.errors import GpuletError


@dataclass
class Clock:
    now_s: float = 0.0

    def __call__(self) -> float:
        return self.now_s


@dataclass
class HeldClient:
    """An agent client whose batches wait until `finish` releases them, in any order."""

    sent: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    held: dict[str, asyncio.Future[frames.Frame]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # items in each held batch

    async def run(self, url: str, gpulet_id: str, model: str, inputs: dict[str, frames.Array],
                  timeout_s: float, request_id: str) -> frames.Frame:  # fmt: skip
        self.held[request_id] = asyncio.get_running_loop().create_future()
        self.rows[request_id] = len(next(iter(inputs.values())))
        self.sent.put_nowait(request_id)
        return await self.held[request_id]

    def finish(
        self, request_id: str, error: GpuletError | None = None, compute_ms: float | None = None
    ) -> None:
        """Answer the batch sent under `request_id` (its first request's): one output row per
        item, or `error`; with `compute_ms`, the worker's time as a real agent reports it."""
        future, rows = self.held.pop(request_id), self.rows.pop(request_id)
        if error is not None:
            future.set_exception(error)
        else:
            header = {} if compute_ms is None else {"compute_ms": compute_ms}
            future.set_result(frames.Frame(header, {"output": np.zeros((rows, 1), np.float32)}))
