"""Profiling for real: pinned measuring processes, real ONNX Runtime, the profile kept in Redis."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.local_model import LocalModel
from agent.profiling.measure import ProfileStep, ProgressFn, measure_profile
from agent.profiling.plan import ProfileRequest, RunBudget, plan_request
from agent.profiling.profiler import ensure_profile
from common.cluster import DeviceInfo
from common.profiles import DeviceProfile
from common.settings import CommonSettings
from common.store import Store

pytestmark = pytest.mark.timeout(120)
CORES = tuple(sorted(os.sched_getaffinity(0)))
SIZES = (1, 2) if len(CORES) >= 2 else (1,)
# Fewer timed runs than the default: these tests check the mechanism, not the numbers.
QUICK = RunBudget(warmup_runs=2, repeat_runs=3, point_budget_ms=500.0)


class CountingMeasure:
    """The real measure_profile, counting its calls and the models each call measured."""

    def __init__(self) -> None:
        self.requests: list[ProfileRequest] = []
        self.finished = threading.Event()

    def __call__(
        self,
        request: ProfileRequest,
        model_dir: Path,
        *,
        source: str,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        models: Mapping[str, LocalModel] | None = None,
    ) -> DeviceProfile:
        self.requests.append(request)
        try:
            quick = ProfileRequest(
                request.models, request.cores, request.sizes, request.batches, QUICK,
                request.max_batches,
            )
            return measure_profile(
                quick, model_dir, source=source, progress=progress, cancel=cancel, models=models
            )
        finally:
            self.finished.set()


async def test_measures_lenet_and_noop_on_pinned_partitions(model_dir: Path) -> None:
    request = plan_request(["lenet", "noop"], CORES, sizes=SIZES, budget=QUICK)
    steps: list[ProfileStep] = []
    profile = await asyncio.to_thread(
        measure_profile, request, model_dir, source="test", progress=steps.append
    )
    assert profile.kind == "cpu"
    assert profile.sizes == tuple(float(s) for s in range(1, len(CORES) + 1))
    assert profile.full_size == len(CORES)
    assert profile.memory_mb > 0
    assert [s.done for s in steps] == list(range(1, request.total_points + 1))
    assert {(s.model, s.cores) for s in steps} == {(m, z) for m in request.models for z in SIZES}
    for size in SIZES:
        for model in ("lenet", "noop"):
            points = profile.latency_points[(model, float(size))]
            assert [b for b, _ in points] == list(request.batches)  # both are far under budget
            assert all(ms > 0 for _, ms in points)
        # 32 images cost more than one; small steps may be noise, so only the ends are compared.
        assert profile.latency_ms("lenet", 32, size) > profile.latency_ms("lenet", 1, size)
    assert DeviceProfile.from_json(profile.to_json()) == profile


async def test_store_keeps_a_profile_with_its_meta(store: Store) -> None:
    assert await store.profile("cpu:nothing") is None
    await store.put_profile("cpu:m", {"name": "p"}, {"models": {"lenet": {"fingerprint": "f"}}})
    meta = {"models": {"lenet": {"fingerprint": "f"}}}
    assert await store.profile("cpu:m") == ({"name": "p"}, meta)
    assert await store.keys() == [f"{store.prefix}profile:cpu:m"]


async def test_ensure_profile_stores_reuses_and_remeasures_a_changed_model(
    store: Store, model_dir: Path
) -> None:
    settings = CommonSettings(model_dir=model_dir)
    device = DeviceInfo("cpu0", "cpu", CORES)
    measure = CountingMeasure()
    shown: list[ProfileStep] = []

    async def ensure(force: bool = False) -> DeviceProfile:
        return await ensure_profile(
            store, settings, device, ["lenet", "noop"], shown.append,
            sizes=[1], force=force, measure=measure,
        )  # fmt: skip

    first = await ensure()
    assert [r.models for r in measure.requests] == [("lenet", "noop")]
    assert len(shown) == 2 * 6  # progress reached the loop for every point
    [key] = await store.keys()
    stored = await store.profile(key.removeprefix(store.prefix + "profile:"))
    assert stored is not None
    profile_json, meta = stored
    assert DeviceProfile.from_json(profile_json) == first
    assert set(meta["models"]) == {"lenet", "noop"}

    again = await ensure()
    assert again == first
    assert len(measure.requests) == 1  # reused, nothing measured

    # lenet's definition changed since it was measured: only lenet is measured again.
    meta["models"]["lenet"]["fingerprint"] = "an older definition"
    await store.put_profile(key.removeprefix(store.prefix + "profile:"), profile_json, meta)
    third = await ensure()
    assert [r.models for r in measure.requests][1:] == [("lenet",)]
    assert third.latency_points[("noop", 1.0)] == first.latency_points[("noop", 1.0)]
    assert third.latency_points[("lenet", 1.0)] != first.latency_points[("lenet", 1.0)]

    await ensure(force=True)
    assert [r.models for r in measure.requests][2:] == [("lenet", "noop")]


async def test_cancelling_ensure_profile_stops_the_measuring_process(
    store: Store, model_dir: Path
) -> None:
    settings = CommonSettings(model_dir=model_dir)
    measure = CountingMeasure()
    task: asyncio.Task[DeviceProfile] | None = None

    def cancel_on_first_point(step: ProfileStep) -> None:
        assert task is not None
        task.cancel()

    task = asyncio.create_task(
        ensure_profile(
            store,
            settings,
            DeviceInfo("cpu0", "cpu", CORES),
            ["resnet50"],
            cancel_on_first_point,
            sizes=[1],
            measure=measure,
        )  # fmt: skip
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread stops its process and returns; the leak fixture then checks no child is left.
    assert await asyncio.to_thread(measure.finished.wait, 60.0)
    assert await store.keys() == []


def test_gpulet_profile_without_redis_writes_the_cache_agents_start_from(
    model_dir: Path, tmp_path: Path
) -> None:
    """`gpulet profile --force` on an idle machine is how a user re-measures: it must land in
    the disk cache that this machine's agents load at start (it was printed, then dropped)."""
    import os
    import shutil
    import subprocess
    import sys

    from agent.devices import discover_cpu
    from agent.profiling.cache import cache_path, profile_key_for, read_cached
    from common.modelzoo.cache import onnx_path, sidecar_path
    from common.settings import CommonSettings

    models = tmp_path / "models"
    models.mkdir()
    for name in ("noop",):
        shutil.copy(onnx_path(model_dir, name), onnx_path(models, name))
        shutil.copy(sidecar_path(model_dir, name), sidecar_path(models, name))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GPULET_REDIS_URL")}
    env["GPULET_MODEL_DIR"] = str(models)
    core = str(min(os.sched_getaffinity(0)))
    command = [sys.executable, "-m", "common.cli.main", "profile", "--models", "noop",
               "--cores", core]  # fmt: skip
    first = subprocess.run([*command, "--force"], env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    settings = CommonSettings(model_dir=models)
    path = cache_path(settings, profile_key_for(discover_cpu(core)))
    assert f"stored in {path}" in first.stderr.replace("\n", "")
    profile, meta = read_cached(path)
    assert {entry["model"] for entry in profile["latency"]} == {"noop"}
    assert set(meta["models"]) == {"noop"}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "reused the stored profile" in again.stderr
