"""ONNX Runtime in the test process, for the outputs a served model must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_session(path: Path) -> Any:
    """A session that takes one core and releases it when a run ends: ONNX Runtime's default
    keeps a thread per core spinning after each run, taking the cores the system under test
    serves its next request on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
