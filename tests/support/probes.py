"""Targets for spawned test processes (importable by multiprocessing's spawn)."""

from __future__ import annotations

import pickle
import sys
from multiprocessing.connection import Connection
from pathlib import Path

CUDA_MODULES = ("torch", "onnxruntime", "pynvml", "tensorrt", "cupy")
CUDA_LIBRARIES = ("libcuda.so", "libcudart", "libnvidia-ml", "libcublas", "libcudnn")


def cuda_loaded_on_arrival(conn: Connection, pickled_config: bytes) -> None:
    """What a spawned worker has loaded when worker_main starts: its module imported and its
    config unpickled, as multiprocessing does before calling the target."""
    import agent.worker  # noqa: F401  (what spawn imports to find worker_main)

    pickle.loads(pickled_config)
    maps = Path("/proc/self/maps").read_text()
    conn.send({
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in CUDA_MODULES),
        "libraries": sorted({lib for lib in CUDA_LIBRARIES if lib in maps}),
    })  # fmt: skip
    conn.close()
