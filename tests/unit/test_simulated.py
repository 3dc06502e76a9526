"""The simulated executor in-process: FIFO gpulets on timers, profiled latency x interference."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from agent.devices import discover_simulated
from agent.simulated import BatchTiming, SimulatedExecutor, TimerKind, output_tensors
from common.errors import BackendFailed, BadRequest, DeadlinePassed, Overloaded, Unavailable
from common.interference import Corunner, NoInterference
from common.placement import GpuletModel, GpuletSpec
from common.profiles import DeviceProfile, find_profile
from common.settings import AgentSettings

pytestmark = pytest.mark.timeout(30)
LONG_S = 30.0
SLOW_MS = 150.0  # a batch that holds its gpulet while the test acts beside it

# A small profile with round numbers; "slow" exists only here, as vgg16 exists only in profiles.
PROFILE = DeviceProfile(
    name="test-gpu",
    kind="nvidia",
    sizes=(50.0, 100.0),
    full_size=100.0,
    memory_mb=16000.0,
    latency_points={
        ("lenet", 50.0): ((1, 2.0), (32, 8.0)),
        ("lenet", 100.0): ((1, 1.0), (32, 4.0)),
        ("vgg16", 50.0): ((1, 5.0), (16, 20.0)),
        ("bert_mini", 50.0): ((1, 3.0), (8, 6.0)),
        ("slow", 50.0): ((1, SLOW_MS),),
    },
)


class NeighbourSlowdown:
    """1.5 whenever anything runs beside the target; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Corunner, tuple[Corunner, ...]]] = []

    def slowdown(self, target: Corunner, neighbours: Sequence[Corunner]) -> float:
        self.calls.append((target, tuple(neighbours)))
        return 1.5 if neighbours else 1.0


def spec(gpulet_id: str, device: str, size: float, *models: str) -> GpuletSpec:
    return GpuletSpec(gpulet_id, "agent", device, (), tuple(GpuletModel(m) for m in models), size)


def batch(n: int) -> dict[str, Any]:
    return {"input": np.zeros((n, 1), np.float32)}


async def make(
    *, devices: int = 2, interference: Any = None, timer: TimerKind = "timerfd", **settings: Any
) -> tuple[SimulatedExecutor, list[BatchTiming]]:
    timings: list[BatchTiming] = []
    executor = SimulatedExecutor(
        AgentSettings(**settings),
        PROFILE,
        discover_simulated(PROFILE, devices),
        interference=interference or NoInterference(),
        timer=timer,
        on_batch=timings.append,
    )
    await executor.start()
    return executor, timings


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimulatedExecutor, list[BatchTiming]]]:
    executor, timings = await make()
    try:
        yield executor, timings
    finally:
        await executor.close()


async def run(executor: SimulatedExecutor, gpulet: str, model: str, n: int,
              timeout_s: float = LONG_S) -> Any:  # fmt: skip
    return await executor.run(gpulet, model, batch(n), time.monotonic() + timeout_s)


async def test_intended_latency_is_the_profiles_and_outputs_have_the_declared_shapes(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, _ = sim
    await executor.apply([spec("g1", "sim0", 50.0, "lenet", "vgg16", "bert_mini")])
    assert [s.state for s in executor.statuses()] == ["ready"]
    for model, n, outputs in [
        ("lenet", 7, {"output": (7, 1)}),  # the token signature, catalog models too
        ("bert_mini", 3, {"output": (3, 1)}),
        ("vgg16", 4, {"output": (4, 1)}),  # profile-only model
    ]:
        reply = await run(executor, "g1", model, n)
        header = reply.header
        assert header["simulated"] is True
        assert header["intended_ms"] == PROFILE.latency_ms(model, n, 50.0)  # interpolated
        assert header["slowdown"] == 1.0
        # Never early; late by at most a generous margin on a busy 2-core box.
        assert header["intended_ms"] <= header["achieved_ms"] < header["intended_ms"] + 100
        assert header["compute_ms"] == header["achieved_ms"]
        assert {k: v.shape for k, v in reply.tensors.items()} == outputs
        assert all(v.dtype == np.float32 for v in reply.tensors.values())


@pytest.mark.parametrize("timer", ["timerfd", "loop"])
async def test_batches_of_one_gpulet_run_one_at_a_time_in_arrival_order(timer: TimerKind) -> None:
    executor, timings = await make(timer=timer)
    try:
        await executor.apply([spec("g1", "sim0", 50.0, "lenet")])
        sizes = [1, 32, 4, 16, 2]
        replies = await asyncio.gather(*(run(executor, "g1", "lenet", n) for n in sizes))
        assert [r.tensors["output"].shape[0] for r in replies] == sizes
        assert [t.batch for t in timings] == sizes
        for before, after in zip(timings, timings[1:], strict=False):
            # back to back on the simulated GPU: each starts when the one before ends as planned
            assert after.started_s == pytest.approx(
                before.started_s + before.intended_ms / 1000, abs=1e-9
            )
            assert after.completed_s >= before.completed_s
        assert all(t.achieved_ms >= t.intended_ms - 1e-6 for t in timings)
    finally:
        await executor.close()


async def test_a_neighbour_running_on_the_same_gpu_slows_a_batch_down() -> None:
    model = NeighbourSlowdown()
    executor, _ = await make(interference=model)
    try:
        await executor.apply([
            spec("g1", "sim0", 50.0, "slow"), spec("g2", "sim0", 50.0, "lenet"),
            spec("g3", "sim1", 50.0, "lenet"),
        ])  # fmt: skip
        alone = await run(executor, "g2", "lenet", 8)
        assert alone.header["slowdown"] == 1.0
        slow = asyncio.ensure_future(run(executor, "g1", "slow", 1))
        await asyncio.sleep(0)  # one turn of the loop: the slow batch starts; noqa: sleep-ok
        beside = await run(executor, "g2", "lenet", 8)
        other_gpu = await run(executor, "g3", "lenet", 8)
        assert beside.header["slowdown"] == 1.5
        assert beside.header["intended_ms"] == PROFILE.latency_ms("lenet", 8, 50.0) * 1.5
        assert model.calls[-2] == (Corunner("lenet", 8, 50.0), (Corunner("slow", 1, 50.0),))
        assert other_gpu.header["slowdown"] == 1.0 and model.calls[-1][1] == ()
        await slow
    finally:
        await executor.close()


async def test_a_batch_whose_deadline_passes_in_the_queue_is_answered_then_and_skipped(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, timings = sim
    await executor.apply([spec("g1", "sim0", 50.0, "slow", "lenet")])
    slow = asyncio.ensure_future(run(executor, "g1", "slow", 1))
    expiring = asyncio.ensure_future(run(executor, "g1", "lenet", 2, timeout_s=SLOW_MS / 3000))
    after = asyncio.ensure_future(run(executor, "g1", "lenet", 3))
    with pytest.raises(DeadlinePassed, match="within the deadline"):
        await expiring
    assert not slow.done(), "the caller is answered at its deadline, not when its turn comes"
    await asyncio.gather(slow, after)
    assert [(t.model, t.batch) for t in timings] == [("slow", 1), ("lenet", 3)]
    assert timings[1].started_s == pytest.approx(timings[0].started_s + SLOW_MS / 1000)
    with pytest.raises(DeadlinePassed, match="before the batch was sent"):
        await executor.run("g1", "lenet", batch(1), time.monotonic() - 1)


async def test_a_full_queue_answers_overloaded_with_its_numbers() -> None:
    executor, _ = await make(max_pending_per_gpulet=2)
    try:
        await executor.apply([spec("g1", "sim0", 50.0, "slow")])
        waiting = [asyncio.ensure_future(run(executor, "g1", "slow", 1)) for _ in range(2)]
        await asyncio.sleep(0)  # one turn: both callers are queued; noqa: sleep-ok
        assert executor.statuses()[0].pending == 2
        with pytest.raises(Overloaded) as caught:
            await run(executor, "g1", "slow", 1)
        assert caught.value.details == {"queued": 2, "limit": 2}
    finally:
        await executor.close()
    for task in waiting:
        with pytest.raises(Unavailable, match="stopped"):
            await task


async def test_a_batch_beyond_the_profile_fails_the_batch_not_the_gpulet(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, _ = sim
    await executor.apply([spec("g1", "sim0", 50.0, "lenet")])
    with pytest.raises(BackendFailed, match=r"measured for batches 1\.\.32, not 64"):
        await run(executor, "g1", "lenet", 64)
    with pytest.raises(BadRequest, match="batch axis"):
        await executor.run("g1", "lenet", {"x": np.zeros(())}, time.monotonic() + LONG_S)
    assert (await run(executor, "g1", "lenet", 32)).tensors["output"].shape == (32, 1)


async def test_unknown_gpulets_models_and_unservable_specs_are_unavailable(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, _ = sim
    await executor.apply([
        spec("ok", "sim0", 50.0, "lenet"), spec("nodev", "sim9", 50.0, "lenet"),
        spec("toobig", "sim0", 60.0, "lenet"), spec("nomodel", "sim1", 50.0, "resnet50"),
        spec("nosize", "sim1", 30.0, "vgg16"),
    ])  # fmt: skip
    states = {s.gpulet_id: (s.state, s.error or "") for s in executor.statuses()}
    assert states["ok"] == ("ready", "")
    assert states["nodev"][0] == "failed" and "devices: ['sim0', 'sim1']" in states["nodev"][1]
    assert states["toobig"][0] == "failed" and "50 of 100 used" in states["toobig"][1]
    assert states["nomodel"][0] == "failed" and "does not cover resnet50" in states["nomodel"][1]
    assert states["nosize"][0] == "failed" and "measures [50.0]" in states["nosize"][1]
    with pytest.raises(Unavailable, match="no gpulet nope"):
        await run(executor, "nope", "lenet", 1)
    with pytest.raises(Unavailable, match="does not serve vgg16"):
        await run(executor, "ok", "vgg16", 1)
    with pytest.raises(Unavailable, match="is failed"):
        await run(executor, "toobig", "lenet", 1)
    status = executor.statuses()[0]
    assert (status.cores, status.pid, status.restarts, status.pending) == ((), None, 0, 0)


async def running_slow_batch(executor: SimulatedExecutor, gpulet: str) -> asyncio.Future[Any]:
    """A "slow" batch started on `gpulet`, still running when this returns."""
    inflight = asyncio.ensure_future(run(executor, gpulet, "slow", 1))
    await asyncio.sleep(0)  # one turn: the batch is running; noqa: sleep-ok
    return inflight


async def test_apply_stops_gpulets_no_longer_wanted_and_fails_their_batches(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, timings = sim
    await executor.apply([spec("g1", "sim0", 50.0, "slow"), spec("g2", "sim0", 50.0, "lenet")])
    inflight = await running_slow_batch(executor, "g1")
    await executor.apply([spec("g2", "sim0", 50.0, "lenet"), spec("g3", "sim0", 50.0, "lenet")])
    with pytest.raises(Unavailable, match="g1 stopped"):
        await inflight
    assert {s.gpulet_id: s.state for s in executor.statuses()} == {"g2": "ready", "g3": "ready"}
    await run(executor, "g3", "lenet", 1)  # the freed half of sim0 is usable again
    assert [t.gpulet_id for t in timings] == ["g3"]


async def test_a_retiring_gpulet_finishes_its_batch_while_its_replacement_starts_beside_it(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, timings = sim
    await executor.apply([spec("old", "sim0", 50.0, "slow"), spec("other", "sim0", 50.0, "lenet")])
    inflight = await running_slow_batch(executor, "old")
    # The GPU is full, yet the new gpulet fits: a retiring share is not counted.
    await executor.apply([spec("new", "sim0", 50.0, "slow")], retiring=["old"])
    assert {s.gpulet_id: s.state for s in executor.statuses()} == {"old": "ready", "new": "ready"}
    await inflight  # not failed by the switch
    await executor.apply([spec("new", "sim0", 50.0, "slow")])
    assert [s.gpulet_id for s in executor.statuses()] == ["new"]
    assert [t.gpulet_id for t in timings] == ["old"]


async def test_a_spec_that_changes_only_batch_sizes_is_taken_in_place(
    sim: tuple[SimulatedExecutor, list[BatchTiming]],
) -> None:
    executor, _ = sim
    await executor.apply([spec("g", "sim0", 50.0, "slow")])
    inflight = await running_slow_batch(executor, "g")
    rebatched = GpuletSpec("g", "agent", "sim0", (), (GpuletModel("slow", 8, 40.0),), 50.0)
    await executor.apply([rebatched])
    await inflight  # the gpulet was not restarted under its batch
    assert executor.gpulets["g"].spec == rebatched


def test_simulated_devices_come_from_the_profile() -> None:
    profile = find_profile("a100-class")
    devices = discover_simulated(profile, 4)
    assert [d.device_id for d in devices] == ["sim0", "sim1", "sim2", "sim3"]
    assert {d.kind for d in devices} == {"simulated"}
    assert {d.memory_bytes for d in devices} == {int(profile.memory_mb * 1024 * 1024)}
    assert all(d.cores == () for d in devices)
    with pytest.raises(ValueError, match="at least one device"):
        discover_simulated(profile, 0)


def test_outputs_are_one_token_per_item_for_every_model() -> None:
    for model in ("bert_mini", "resnet152"):
        outputs = output_tensors(model, 5)
        assert {k: (v.shape, v.dtype) for k, v in outputs.items()} == {
            "output": ((5, 1), np.float32)
        }
