"""Export one zoo net to ONNX, check it in ONNX Runtime against torch and the catalog, cache it.

Only the build step (`build.py`) imports this module, so importing torch at the top is fine.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.models import BATCH_DIM, CATALOG, TensorSpec
from common.modelzoo.cache import FILE_MODE, MODEL_SEED, OPSET, onnx_path, write_sidecar
from common.modelzoo.nets import example_inputs, make_net

# Largest |onnx - torch| accepted on any output element: ATOL + RTOL * max|torch output|.
# float32 kernels in the two runtimes sum in different orders; the error grows with depth and
# with the outputs' scale (resnet50 measured 5.7e-5 here), so the bound scales with the output.
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-4
# Batches the export is checked at: neither is the traced batch (2), so a batch size baked into
# the graph shows up as a shape error or a mismatch.
VERIFY_BATCHES = (1, 3)
BATCH_AXIS_NAME = "batch"

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


class ExportError(RuntimeError):
    """The exported graph does not match the catalog or does not compute what torch computes."""


@dataclass(frozen=True)
class ExportResult:
    name: str
    path: Path
    onnx_bytes: int
    export_s: float
    verify_s: float
    max_abs_diff: float


def export_model(
    model_dir: Path, name: str, *, on_step: Callable[[str], None] | None = None
) -> ExportResult:
    """Build `NAME.onnx` and its sidecar in `model_dir`; `on_step` hears each step's name.

    The file is written under a temp name, verified, then renamed into place, so a failed or
    interrupted export never leaves a half-written or wrong model behind.
    """
    step = on_step or (lambda _: None)
    spec = CATALOG[name]
    model_dir.mkdir(parents=True, exist_ok=True)
    step("constructing")
    net, example = make_net(name, MODEL_SEED)
    fd, tmp_name = tempfile.mkstemp(dir=model_dir, prefix=f".{name}.", suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        step("exporting")
        started = time.perf_counter()
        _torchscript_export(net, example, tmp, spec.inputs, spec.outputs)
        export_s = time.perf_counter() - started
        step("verifying")
        started = time.perf_counter()
        max_abs_diff = verify_onnx(tmp, name, net)
        verify_s = time.perf_counter() - started
        onnx_bytes = tmp.stat().st_size
        final = onnx_path(model_dir, name)
        tmp.chmod(FILE_MODE)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_sidecar(
        model_dir,
        name,
        {
            "bytes": onnx_bytes,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "export_s": round(export_s, 3),
            "verify_max_abs_diff": max_abs_diff,
            "torch_version": torch.__version__,
            "onnxruntime_version": ort.__version__,
        },
    )
    return ExportResult(name, final, onnx_bytes, export_s, verify_s, max_abs_diff)


def _torchscript_export(
    net: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> None:
    # The legacy TorchScript exporter, not the default dynamo one: measured on this machine class
    # it exports about 5x faster, its BERT graph runs 15-25 % faster in ONNX Runtime, and it needs
    # no onnxscript. It warns that it is deprecated; silence that here only, since tests turn
    # warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes={s.name: {0: BATCH_AXIS_NAME} for s in (*inputs, *outputs)},
        )


def verify_onnx(path: Path, name: str, net: torch.nn.Module) -> float:
    """Check the ONNX file's signature against the catalog and its outputs against `net`.

    Returns the largest absolute difference seen; raises ExportError naming the model otherwise.
    """
    spec = CATALOG[name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _check_signature(name, "input", session.get_inputs(), spec.inputs)
    _check_signature(name, "output", session.get_outputs(), spec.outputs)
    worst = 0.0
    for batch in VERIFY_BATCHES:
        feeds = example_inputs(name, batch, MODEL_SEED + batch)
        with torch.no_grad():
            expected = net(*feeds)
        (got,) = session.run(
            [s.name for s in spec.outputs],
            {s.name: t.numpy() for s, t in zip(spec.inputs, feeds, strict=True)},
        )
        if got.shape != tuple(expected.shape):
            raise ExportError(
                f"model {name!r}: onnx output shape {got.shape} at batch {batch}, "
                f"torch gives {tuple(expected.shape)}"
            )
        reference = expected.numpy()
        diff = float(np.max(np.abs(got - reference)))
        limit = VERIFY_ATOL + VERIFY_RTOL * float(np.max(np.abs(reference)))
        if not diff <= limit:  # written so that a NaN diff fails too
            raise ExportError(
                f"model {name!r}: onnx and torch outputs differ by {diff:.3g} at batch {batch} "
                f"(limit {limit:.3g})"
            )
        worst = max(worst, diff)
    return worst


def _check_signature(
    name: str, kind: str, actual: list[ort.NodeArg], expected: tuple[TensorSpec, ...]
) -> None:
    got = [arg.name for arg in actual]
    want = [s.name for s in expected]
    if got != want:
        raise ExportError(f"model {name!r}: onnx {kind} names {got}, catalog says {want}")
    for arg, s in zip(actual, expected, strict=True):
        dtype = _ORT_DTYPES.get(arg.type, arg.type)
        if dtype != s.dtype:
            raise ExportError(
                f"model {name!r}: {kind} {s.name!r} has dtype {dtype}, catalog says {s.dtype}"
            )
        # ORT reports a symbolic dim as its name (a str) and a static one as an int.
        batch_dim, *item_dims = arg.shape
        if not isinstance(batch_dim, str) or tuple(item_dims) != s.item_shape:
            raise ExportError(
                f"model {name!r}: {kind} {s.name!r} has shape {arg.shape}, catalog says "
                f"{s.describe()} (axis 0 must be symbolic, {BATCH_DIM} in the catalog)"
            )
