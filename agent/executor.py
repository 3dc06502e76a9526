"""What the agent's API needs from whatever runs its gpulets: the `Supervisor` (worker processes)
or the `SimulatedExecutor` (profiled latencies on timers) implement it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common import frames
from common.cluster import GpuletStatus
from common.placement import GpuletSpec


class GpuletExecutor(Protocol):
    async def start(self) -> None: ...

    async def apply(self, specs: Sequence[GpuletSpec]) -> None:
        """Make the running gpulets equal `specs`: start new ones, stop gone or changed ones."""
        ...

    async def run(
        self,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        deadline_monotonic_s: float,
    ) -> frames.Frame:
        """Run one batch; the reply's header carries `compute_ms`. Raises GpuletError."""
        ...

    def statuses(self) -> list[GpuletStatus]: ...

    async def close(self) -> None: ...
