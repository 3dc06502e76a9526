"""What NVML says about this host's GPUs: the one module that imports `pynvml` (nvidia-ml-py), and
only when asked. Tests pass a fake with the same functions (tests/support/fake_nvml.py).

`read_gpus(nvml)` turns NVML's answers into `GpuFacts`: memory, compute capability, MIG mode
and the MIG instances present (UUID, profile, share of the GPU). It never changes MIG mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

NVML_DEVICE_MIG_ENABLE = 1  # pynvml.NVML_DEVICE_MIG_ENABLE


@dataclass(frozen=True)
class MigFacts:
    """One MIG instance: what a gpulet bound to it gets."""

    uuid: str  # "MIG-..." : what CUDA_VISIBLE_DEVICES names
    profile: str  # e.g. "3g.40gb"
    # Its compute slices over the GPU's: 3g of a 7-slice H100 is 42.9 %.
    size_pct: float
    memory_bytes: int


@dataclass(frozen=True)
class GpuFacts:
    index: int
    uuid: str  # "GPU-..."
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    mig_enabled: bool = False
    mig: tuple[MigFacts, ...] = ()

    @property
    def compute_capability_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


class NvmlError(RuntimeError):
    """NVML is missing or failed; the message says which."""


class NvmlApi(Protocol):
    """The part of pynvml we call (names as pynvml spells them)."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # .total bytes
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...
    def nvmlDeviceGetMigMode(self, handle: Any) -> tuple[int, int]: ...  # (current, pending)
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any: ...
    # For MIG handles: .gpuInstanceSliceCount, .memorySizeMB
    def nvmlDeviceGetAttributes(self, handle: Any) -> Any: ...
    # Each with .pid and .usedGpuMemory (bytes, or None where the driver will not say)
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]: ...


def load_nvml() -> NvmlApi:
    """pynvml, initialised; NvmlError when nvidia-ml-py or the driver is missing."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlError("nvidia-ml-py is not installed (pip install 'gpulet[gpu]')") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlError(f"NVML did not start: {exc} (no NVIDIA driver?)") from exc
    api: NvmlApi = pynvml
    return api


def read_gpus(nvml: NvmlApi) -> tuple[GpuFacts, ...]:
    """Every GPU NVML lists, with its MIG instances when MIG mode is on."""
    try:
        return tuple(_read_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount()))
    except nvml.NVMLError as exc:
        raise NvmlError(f"NVML query failed: {exc}") from exc


def driver_version(nvml: NvmlApi) -> str:
    """The NVIDIA driver's version, e.g. "580.159.04" (what a measured profile names)."""
    try:
        return _text(nvml.nvmlSystemGetDriverVersion())
    except nvml.NVMLError as exc:
        raise NvmlError(f"NVML query failed: {exc}") from exc


def _read_gpu(nvml: NvmlApi, index: int) -> GpuFacts:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    try:
        mig_enabled = nvml.nvmlDeviceGetMigMode(handle)[0] == NVML_DEVICE_MIG_ENABLE
    except nvml.NVMLError:  # NOT_SUPPORTED: a GPU without MIG (anything before Ampere A100/A30)
        mig_enabled = False
    return GpuFacts(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        compute_capability=(int(major), int(minor)),
        mig_enabled=mig_enabled,
        mig=_read_mig(nvml, handle) if mig_enabled else (),
    )


def _read_mig(nvml: NvmlApi, handle: Any) -> tuple[MigFacts, ...]:
    # The maximum count of MIG devices equals the GPU's compute slices (7 on A100/H100, 4 on
    # A30): the denominator of an instance's share.
    slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    found = []
    for slot in range(slots):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:  # NOT_FOUND: no instance in this slot
            continue
        attributes = nvml.nvmlDeviceGetAttributes(mig)
        name = _text(nvml.nvmlDeviceGetName(mig))
        found.append(
            MigFacts(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                profile=name.rsplit(" ", 1)[-1],  # "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
                size_pct=round(100.0 * attributes.gpuInstanceSliceCount / slots, 3),
                memory_bytes=int(attributes.memorySizeMB) * 2**20,
            )
        )
    return tuple(found)


def process_gpu_memory_bytes(pid: int, nvml: NvmlApi | None = None) -> int | None:
    """GPU memory NVML attributes to process `pid`, summed over GPUs; None where unknown.

    Under MPS on Volta and later, clients are listed with their own memory (type M+C).
    """
    try:
        api = nvml or load_nvml()
        total, seen = 0, False
        for index in range(api.nvmlDeviceGetCount()):
            handle = api.nvmlDeviceGetHandleByIndex(index)
            for process in api.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    total, seen = total + int(process.usedGpuMemory), True
        return total if seen else None
    except Exception as exc:  # NvmlError, or one of pynvml's own NVMLError subclasses
        logger.debug("no NVML memory figure for pid=%s: %s", pid, exc)
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
