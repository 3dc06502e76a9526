"""Planning on real GPUs: each nvidia device takes the profile with the sizes it offers (MPS
percentages, 100 only when time-sliced, a MIG instance's own share)."""

from __future__ import annotations

import time

import pytest

from common.cluster import AgentInfo, DeviceInfo, named_key, parse_named_key, parse_simulated_key
from common.profiles import DeviceProfile
from router.scheduling.live import cpu_devices, plan_live

pytestmark = pytest.mark.timeout(60)
GIB = 2**30


def gpu_profile() -> DeviceProfile:
    """A toy GPU: L(b, p %) = 2 ms + 0.5 ms · b · 100 / p for "img"."""
    sizes = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
    points = {
        ("img", p): tuple((b, 2.0 + 0.5 * b * 100 / p) for b in (1, 2, 4, 8, 16, 32))
        for p in sizes
    }
    return DeviceProfile("toy-gpu", "nvidia", sizes, 100.0, 80_000, points)


def gpu_agent(agent_id: str, *devices: DeviceInfo) -> AgentInfo:
    return AgentInfo(agent_id, f"http://{agent_id}", "host", 1, devices, time.time(), "k")


MPS = DeviceInfo("gpu0", "nvidia", (), 40 * GIB, (20.0, 50.0, 100.0), "mps")
SLICED = DeviceInfo("gpu1", "nvidia", (), 80 * GIB, (100.0,), "time-sliced")
MIG_3G = DeviceInfo("gpu2-mig0", "nvidia", (), 20 * GIB, (42.857,), "mig")
MIG_1G = DeviceInfo("gpu2-mig1", "nvidia", (), 5 * GIB, (14.286,), "mig")


def test_each_gpu_takes_the_profile_at_its_own_sizes_and_memory() -> None:
    devices, cores = cpu_devices([gpu_agent("a", MPS, SLICED, MIG_3G, MIG_1G)], gpu_profile())
    by_id = {d.device_id: d.profile for d in devices}
    # The 1g instance (14 %) lies below the smallest profiled size: never extrapolated.
    assert sorted(by_id) == ["a/gpu0", "a/gpu1", "a/gpu2-mig0"]
    assert (by_id["a/gpu0"].sizes, by_id["a/gpu0"].full_size) == ((20.0, 50.0, 100.0), 100.0)
    assert by_id["a/gpu0"].memory_mb == 40 * 1024
    assert by_id["a/gpu1"].sizes == (100.0,)
    assert (by_id["a/gpu2-mig0"].sizes, by_id["a/gpu2-mig0"].full_size) == ((42.857,), 42.857)
    assert all(c == () for c in cores.values())


def test_cpu_profiles_skip_gpus_and_gpu_profiles_skip_cpus() -> None:
    cpu = DeviceInfo("cpu0", "cpu", (0, 1))
    cpu_profile = DeviceProfile("c", "cpu", (1.0, 2.0), 2.0, 1000, {("img", 1.0): ((1, 1.0),)})
    assert cpu_devices([gpu_agent("a", MPS, cpu)], gpu_profile())[0][0].device_id == "a/gpu0"
    assert [d.device_id for d in cpu_devices([gpu_agent("a", MPS, cpu)], cpu_profile)[0]] == [
        "a/cpu0"
    ]


@pytest.mark.parametrize(("device", "allowed"), [(MPS, {20.0, 50.0, 100.0}), (SLICED, {100.0})])
def test_plans_place_gpulets_of_offered_sizes_on_the_gpu(
    device: DeviceInfo, allowed: set[float]
) -> None:
    live = plan_live([gpu_agent("a", device)], gpu_profile(), {"img": 60.0}, {"img": 300.0},
                     "gpulet")  # fmt: skip
    assert live is not None and live.plan.feasible
    gpulets = live.placement.gpulets
    assert gpulets and {g.size for g in gpulets} <= allowed
    assert sum(g.size for g in gpulets) <= 100.0
    assert all(g.device_id == device.device_id and g.cores == () for g in gpulets)
    assert [g.gpulet_id for g in gpulets] == [f"a.{device.device_id}.p{i}"
                                              for i in range(len(gpulets))]  # fmt: skip


def test_one_time_sliced_gpu_carries_two_models_in_one_whole_gpulet() -> None:
    """No rates: the plan is for the largest equal rate, searched up from 1 req/s, where each
    model alone fills no batch per cycle: the second joins the first's gpu-let at batch 1."""
    profile = gpu_profile()
    points = {("txt", p): tuple((b, 1.0 + 0.1 * b * 100 / p) for b in (1, 2, 4, 8, 16, 32))
              for p in profile.sizes}  # fmt: skip
    both = DeviceProfile("toy-gpu", "nvidia", profile.sizes, 100.0, 80_000,
                         {**profile.latency_points, **points})  # fmt: skip
    live = plan_live([gpu_agent("a", SLICED)], both, {"img": 60.0, "txt": 30.0}, {}, "gpulet+int")
    assert live is not None and live.plan.feasible and live.rate_rps is not None
    (gpulet,) = live.placement.gpulets
    assert gpulet.size == 100.0 and {m.name for m in gpulet.models} == {"img", "txt"}


def test_named_profile_keys_are_not_simulated_ones() -> None:
    key = named_key("a100-class")
    assert parse_named_key(key) == ("a100-class", 1.0)
    assert parse_simulated_key(key) is None
    assert parse_named_key("sim:a100-class") is None and parse_named_key("nvidia:ab") is None
