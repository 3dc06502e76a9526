"""What the agent's API needs from whatever runs its gpulets: the `Supervisor` (worker processes)
or the `SimulatedExecutor` (profiled latencies on timers) implement it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from common import frames
from common.cluster import GpuletStatus
from common.errors import Unavailable
from common.placement import GpuletSpec

T = TypeVar("T")


def serving(
    gpulets: Mapping[str, T], gpulet_id: str, model: str, spec_of: Callable[[T], GpuletSpec]
) -> T:
    """The gpulet a batch is for, if it is here and serves `model`; else 503 saying which."""
    found = gpulets.get(gpulet_id)
    if found is None:
        raise Unavailable(f"no gpulet {gpulet_id} on this agent", gpulet=gpulet_id)
    if model not in spec_of(found).model_names:
        raise Unavailable(f"gpulet {gpulet_id} does not serve {model}", gpulet=gpulet_id)
    return found


class GpuletExecutor(Protocol):
    async def start(self) -> None: ...

    async def apply(self, specs: Sequence[GpuletSpec], retiring: Collection[str] = ()) -> None:
        """Make the running gpulets equal `specs`: start new ones, stop gone ones and those whose
        partition changed (a spec that differs only in batch sizes or rates is taken in place).
        Gpulets named in `retiring` that run here keep running beside them, not counted in the
        device's capacity: the router still drains requests from them during a switch."""
        ...

    async def run(
        self,
        gpulet_id: str,
        model: str,
        tensors: dict[str, frames.Array],
        deadline_monotonic_s: float,
        shared: str | None = None,
    ) -> frames.Frame:
        """Run one batch: `tensors`, or, when `shared` names one, the batch a router left in
        /dev/shm (common.shared_memory). The reply's header carries `compute_ms`. Raises
        GpuletError."""
        ...

    def statuses(self) -> list[GpuletStatus]: ...

    async def close(self) -> None: ...
