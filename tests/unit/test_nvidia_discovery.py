"""NVIDIA discovery against a fake NVML (and canned nvidia-smi output), and which agent devices
the GPUs become: MPS sizes, MIG instances, the time-sliced fallback."""

from __future__ import annotations

import pytest

from agent.nvidia.inventory import (
    DEFAULT_MPS_SIZES,
    build_inventory,
    needs_mps,
    parse_sizes,
    select_gpus,
)
from agent.nvidia.mps import MpsState
from agent.nvidia.nvml import (
    GpuFacts,
    MigFacts,
    NvmlError,
    driver_version,
    process_gpu_memory_bytes,
    read_gpus,
)
from agent.nvidia.smi import parse_gpu_query, parse_mig_list, read_driver_smi, read_gpus_smi
from common.cluster import DeviceInfo, GpuletStatus
from common.settings import AgentSettings
from tests.support.fake_nvml import FakeGpu, FakeMig, FakeNvml

pytestmark = pytest.mark.timeout(30)

PLAIN = FakeGpu("GPU-aaaa-1111")
MIG_GPU = FakeGpu(
    "GPU-bbbb-2222",
    name="NVIDIA A100-SXM4-40GB",
    memory_bytes=40 * 2**30,
    compute_capability=(8, 0),
    mig_mode=1,
    migs={0: FakeMig("MIG-cccc", "3g.20gb", 3, 19968), 4: FakeMig("MIG-dddd", "1g.5gb", 1, 4864)},
)
MPS_OK = MpsState(True, True, 4242, "daemon pid 4242 started by this agent")
MPS_NO = MpsState(False, False, None, "unusable: no nvidia-cuda-mps-control on PATH")


def started(*gpus: FakeGpu, fail_on: str | None = None) -> FakeNvml:
    nvml = FakeNvml(list(gpus), fail_on=fail_on)
    nvml.nvmlInit()
    return nvml


def test_read_gpus_reports_memory_capability_and_mig_instances() -> None:
    plain, mig = read_gpus(started(PLAIN, MIG_GPU))
    assert plain == GpuFacts(0, "GPU-aaaa-1111", "NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))
    assert (mig.index, mig.mig_enabled, mig.compute_capability_text) == (1, True, "8.0")
    # Slots 1-3 and 5-6 hold no instance; shares are slices over the 7 of the GPU.
    assert mig.mig == (
        MigFacts("MIG-cccc", "3g.20gb", round(300 / 7, 3), 19968 * 2**20),
        MigFacts("MIG-dddd", "1g.5gb", round(100 / 7, 3), 4864 * 2**20),
    )


def test_mig_capable_gpu_with_mig_off_has_no_instances() -> None:
    (gpu,) = read_gpus(started(FakeGpu("GPU-eeee", mig_mode=0)))
    assert gpu.mig_enabled is False and gpu.mig == ()


def test_nvml_failure_is_one_error_naming_it() -> None:
    with pytest.raises(NvmlError, match="nvmlDeviceGetUUID"):
        read_gpus(started(PLAIN, fail_on="nvmlDeviceGetUUID"))


def test_process_memory_sums_the_pid_over_gpus_and_is_none_when_absent() -> None:
    one = FakeGpu("GPU-1", processes=[(10, 300 * 2**20), (11, 5)])
    two = FakeGpu("GPU-2", processes=[(10, 200 * 2**20)])
    nvml = started(one, two)
    assert process_gpu_memory_bytes(10, nvml) == 500 * 2**20
    assert process_gpu_memory_bytes(99, nvml) is None


SMI_QUERY = """0, GPU-aaaa-1111, NVIDIA H100 80GB HBM3, 81559, 9.0, Disabled
1, GPU-bbbb-2222, NVIDIA A30, 24576, 8.0, Enabled
"""
SMI_LIST = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa-1111)
GPU 1: NVIDIA A30 (UUID: GPU-bbbb-2222)
  MIG 2g.12gb     Device  0: (UUID: MIG-ffff-0001)
  MIG 1g.6gb      Device  1: (UUID: MIG-ffff-0002)
"""


def test_nvidia_smi_fallback_parses_gpus_and_mig_instances() -> None:
    def run(args: object) -> str:
        return SMI_LIST if list(args) == ["-L"] else SMI_QUERY  # type: ignore[call-overload]

    h100, a30 = read_gpus_smi(run)
    assert (h100.memory_bytes, h100.compute_capability, h100.mig) == (81559 * 2**20, (9, 0), ())
    # The A30 has 4 compute slices: 2g is half of it.
    assert [(m.uuid, m.profile, m.size_pct) for m in a30.mig] == [
        ("MIG-ffff-0001", "2g.12gb", 50.0),
        ("MIG-ffff-0002", "1g.6gb", 25.0),
    ]
    assert parse_mig_list(SMI_LIST)["GPU-aaaa-1111"] == ()
    with pytest.raises(NvmlError, match="unexpected nvidia-smi row"):
        parse_gpu_query("0, GPU-x, name-without-fields\n")


def test_mps_gpu_offers_the_configured_sizes() -> None:
    gpus = read_gpus(started(PLAIN))
    inventory = build_inventory(gpus, DEFAULT_MPS_SIZES, MPS_OK, "/tmp/pipe")
    (device,) = inventory.devices
    assert (device.device_id, device.kind, device.sharing) == ("gpu0", "nvidia", "mps")
    assert device.sizes == (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
    assert device.memory_bytes == 80 * 2**30 and "H100" in device.note
    slot = inventory.slots["gpu0"]
    assert (slot.visible, slot.sharing, slot.mps_pipe_dir) == ("GPU-aaaa-1111", "mps", "/tmp/pipe")


def test_without_mps_a_gpu_is_time_sliced_whole_and_says_why() -> None:
    gpus = read_gpus(started(PLAIN))
    (device,) = build_inventory(gpus, DEFAULT_MPS_SIZES, MPS_NO, None).devices
    assert device.sharing == "time-sliced" and device.sizes == (100.0,)
    assert "no nvidia-cuda-mps-control on PATH" in device.note


def test_mig_instances_are_devices_and_a_mig_gpu_without_any_warns() -> None:
    empty = FakeGpu("GPU-9999", mig_mode=1)
    gpus = read_gpus(started(MIG_GPU, empty))
    assert needs_mps(gpus) == ()  # MIG GPUs get no MPS daemon
    inventory = build_inventory(gpus, DEFAULT_MPS_SIZES, None, None)
    assert [(d.device_id, d.sharing, d.sizes) for d in inventory.devices] == [
        ("gpu0-mig0", "mig", (round(300 / 7, 3),)),
        ("gpu0-mig1", "mig", (round(100 / 7, 3),)),
    ]
    assert inventory.devices[0].memory_bytes == 19968 * 2**20
    assert inventory.slots["gpu0-mig1"].visible == "MIG-dddd"
    (warning,) = inventory.warnings
    assert "GPU 1 is in MIG mode with no instances" in warning and "never changes MIG" in warning


def test_gpu_selection_and_sizes_settings() -> None:
    gpus = read_gpus(started(PLAIN, MIG_GPU))
    assert [g.index for g in select_gpus(gpus, "1")] == [1]
    assert [g.index for g in select_gpus(gpus, "GPU-aaaa")] == [0]
    assert select_gpus(gpus, None) == gpus
    with pytest.raises(ValueError, match="names GPUs this host lacks"):
        select_gpus(gpus, "0,7")
    assert parse_sizes("50, 100,20") == (20.0, 50.0, 100.0)
    for bad in ("", "0,50", "120", "half"):
        with pytest.raises(ValueError, match="GPULET_MPS_SIZES"):
            parse_sizes(bad)


def test_device_and_status_json_keep_new_fields_and_read_old_agents() -> None:
    device = DeviceInfo("gpu0", "nvidia", (), 10, (20.0, 100.0), "time-sliced", "why")
    assert DeviceInfo.from_json(device.to_json()) == device
    old = DeviceInfo.from_json({"device_id": "cpu0", "kind": "cpu", "cores": [0, 1]})
    assert (old.sizes, old.sharing, old.note) == ((), "", "")
    status = GpuletStatus("g", "ready", ("m",), (), 1, 0, 0, None, "torch-cuda", 123)
    assert GpuletStatus.from_json(status.to_json()) == status
    legacy = GpuletStatus.from_json({"gpulet_id": "g", "state": "ready"})
    assert (legacy.engine, legacy.gpu_memory_bytes) == (None, 0)


def failing_reader() -> tuple[tuple[GpuFacts, ...], str]:
    raise NvmlError("nvidia-ml-py is not installed; neither nvidia-smi")


def test_device_kind_decides_between_gpus_and_cpu_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.nvidia import backend

    gpu = GpuFacts(0, "GPU-a", "NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))
    assert backend.build_nvidia_executor(AgentSettings(device_kind="cpu"), read=failing_reader) \
        is None  # fmt: skip
    assert backend.build_nvidia_executor(AgentSettings(), read=failing_reader) is None
    with pytest.raises(backend.NoGpu, match="GPULET_DEVICE_KIND=nvidia, but nvidia-ml-py"):
        backend.build_nvidia_executor(AgentSettings(device_kind="nvidia"), read=failing_reader)
    # GPUs but no engine to run on them: auto serves CPU core sets rather than failing gpulets.
    monkeypatch.setattr(backend, "engine_installed", lambda preference: False)
    assert backend.build_nvidia_executor(AgentSettings(), read=lambda: ((gpu,), "t")) is None


def test_host_gpus_fall_back_to_nvidia_smi_and_name_both_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.nvidia import backend

    def no_nvml() -> FakeNvml:
        raise NvmlError("nvidia-ml-py is not installed")

    monkeypatch.setattr(backend, "load_nvml", no_nvml)
    monkeypatch.setattr(backend, "read_gpus_smi", lambda: (GpuFacts(0, "GPU-s", "T4", 1, (7, 5)),))
    assert backend.read_host_gpus()[1] == "nvidia-smi"

    def no_smi() -> tuple[GpuFacts, ...]:
        raise NvmlError("neither nvidia-ml-py nor nvidia-smi is available")

    monkeypatch.setattr(backend, "read_gpus_smi", no_smi)
    with pytest.raises(NvmlError, match="not installed; neither"):
        backend.read_host_gpus()
    nvml = FakeNvml([PLAIN])
    monkeypatch.setattr(backend, "load_nvml", lambda: (nvml.nvmlInit(), nvml)[1])
    gpus, source = backend.read_host_gpus()
    assert source == "NVML" and gpus[0].uuid == "GPU-aaaa-1111" and nvml.shutdowns == 1


def test_driver_version_from_nvml_else_nvidia_smi_else_both_failures_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.nvidia import backend

    assert driver_version(started(PLAIN)) == "999.99.99-fake"
    with pytest.raises(NvmlError, match="nvmlSystemGetDriverVersion: Unknown Error"):
        driver_version(started(PLAIN, fail_on="nvmlSystemGetDriverVersion"))
    assert read_driver_smi(lambda args: "580.159.04\n580.159.04\n") == "580.159.04"
    with pytest.raises(NvmlError, match="no driver version"):
        read_driver_smi(lambda args: "")

    nvml = FakeNvml([PLAIN], driver="580.1")
    monkeypatch.setattr(backend, "load_nvml", lambda: (nvml.nvmlInit(), nvml)[1])
    assert backend.read_host_driver() == "580.1" and nvml.shutdowns == 1

    def no_nvml() -> FakeNvml:
        raise NvmlError("nvidia-ml-py is not installed")

    def no_smi() -> str:
        raise NvmlError("neither nvidia-ml-py nor nvidia-smi is available")

    monkeypatch.setattr(backend, "load_nvml", no_nvml)
    monkeypatch.setattr(backend, "read_driver_smi", lambda: "535.2")
    assert backend.read_host_driver() == "535.2"
    monkeypatch.setattr(backend, "read_driver_smi", no_smi)
    with pytest.raises(NvmlError, match="not installed; neither"):
        backend.read_host_driver()
