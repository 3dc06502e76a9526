"""A fake NVML with pynvml's functions, driven by data: the one thing tests fake (STYLE rule 5).

`FakeNvml` is passed where the real code takes `pynvml`; `tests/support/fake_pynvml/pynvml.py`
is the same fake as an importable module, for agents run as real processes (PYTHONPATH).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0
H100_SLICES = 7
FAKE_DRIVER = "999.99.99-fake"


class NVMLError(Exception):
    """pynvml's base error class."""


@dataclass
class FakeMig:
    uuid: str
    profile: str  # "3g.40gb"
    slices: int
    memory_mb: int


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_bytes: int = 80 * 2**30
    compute_capability: tuple[int, int] = (9, 0)
    mig_mode: int | None = None  # None: the GPU does not support MIG
    migs: dict[int, FakeMig] = field(default_factory=dict)  # by MIG slot
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)


class FakeNvml:
    NVMLError = NVMLError

    def __init__(
        self, gpus: list[FakeGpu], fail_on: str | None = None, driver: str = FAKE_DRIVER
    ) -> None:
        self.gpus = gpus
        self.driver = driver
        self.fail_on = fail_on  # a function name that raises NVMLError, to test failures
        self.initialised = False
        self.shutdowns = 0

    @classmethod
    def from_json(cls, text: str) -> FakeNvml:
        gpus = []
        for g in json.loads(text):
            migs = {int(k): FakeMig(**v) for k, v in g.pop("migs", {}).items()}
            g["compute_capability"] = tuple(g.get("compute_capability", (9, 0)))
            gpus.append(FakeGpu(**g, migs=migs))
        return cls(gpus)

    def _call(self, name: str) -> None:
        if not self.initialised:
            raise NVMLError("Uninitialized")
        if name == self.fail_on:
            raise NVMLError(f"{name}: Unknown Error")

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._call("nvmlDeviceGetHandleByIndex")
        return ("gpu", index)

    def _gpu(self, handle: Any) -> FakeGpu:
        return self.gpus[handle[1]]

    def _mig(self, handle: Any) -> FakeMig:
        return self.gpus[handle[1]].migs[handle[2]]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._call("nvmlDeviceGetName")
        if handle[0] == "mig":
            return f"{self._gpu(handle).name} MIG {self._mig(handle).profile}"
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._call("nvmlDeviceGetUUID")
        return self._mig(handle).uuid if handle[0] == "mig" else self._gpu(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=self._gpu(handle).memory_bytes, used=0,
                               free=self._gpu(handle).memory_bytes)  # fmt: skip

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        self._call("nvmlDeviceGetCudaComputeCapability")
        return self._gpu(handle).compute_capability

    def nvmlDeviceGetMigMode(self, handle: Any) -> tuple[int, int]:
        self._call("nvmlDeviceGetMigMode")
        mode = self._gpu(handle).mig_mode
        if mode is None:
            raise NVMLError("Not Supported")
        return mode, mode

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        return H100_SLICES if self._gpu(handle).mig_mode is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        if index not in self._gpu(handle).migs:
            raise NVMLError("Not Found")
        return ("mig", handle[1], index)

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        self._call("nvmlDeviceGetAttributes")
        if handle[0] != "mig":
            raise NVMLError("Not Supported")  # as the real one: MIG handles only
        mig = self._mig(handle)
        return SimpleNamespace(gpuInstanceSliceCount=mig.slices, memorySizeMB=mig.memory_mb,
                               multiprocessorCount=mig.slices * 16)  # fmt: skip

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in self._gpu(handle).processes]
