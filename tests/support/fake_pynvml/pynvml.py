"""A fake `pynvml` module for agents run as real processes in tests: put this folder first on
PYTHONPATH and describe the GPUs as JSON in FAKE_NVML_GPUS (see tests/support/fake_nvml.py)."""

from __future__ import annotations

import os

from tests.support.fake_nvml import NVML_DEVICE_MIG_ENABLE, FakeNvml, NVMLError

_FAKE = FakeNvml.from_json(os.environ.get("FAKE_NVML_GPUS", "[]"))

__all__ = ["NVML_DEVICE_MIG_ENABLE", "NVMLError"]

# pynvml's functions, module-level as there: nvmlInit, nvmlDeviceGetCount, ...
globals().update({name: getattr(_FAKE, name) for name in dir(FakeNvml) if name.startswith("nvml")})
