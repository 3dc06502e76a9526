"""Where built ONNX files live and whether they are current: the router and agent check this.

No torch and no onnxruntime here. Each `NAME.onnx` has a `NAME.json` sidecar whose fingerprint
hashes everything that shapes the file, so editing a net or the export settings forces a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.models import CATALOG

# Seed every zoo model's weights are drawn from (torch.manual_seed): same seed, same weights.
MODEL_SEED = 20261124
# ONNX opset of the export: 17 is the first with LayerNormalization, so BERT's layer norms
# export as one op instead of a ReduceMean/Sub/Pow/Sqrt chain.
OPSET = 17

# Mode of every file written here: mkstemp makes 0600, but the agent may run as another user.
FILE_MODE = 0o644

# The files whose bytes define a model: any edit to them changes every fingerprint.
_SOURCE_FILES = ("nets.py", "export.py")


def onnx_path(model_dir: Path, name: str) -> Path:
    return model_dir / f"{name}.onnx"


def sidecar_path(model_dir: Path, name: str) -> Path:
    return model_dir / f"{name}.json"


def fingerprint(name: str) -> str:
    """sha256 over the net and exporter sources, the model's name and signature, seed and opset."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for filename in _SOURCE_FILES:
        digest.update(filename.encode())
        digest.update((here / filename).read_bytes())
    spec = CATALOG.get(name)
    # The catalog signature is part of what the export checks against, so a renamed or reshaped
    # tensor must rebuild too; the SLO and description are not, so they are left out.
    signature = repr((spec.inputs, spec.outputs)) if spec is not None else ""
    settings = {"name": name, "signature": signature, "seed": MODEL_SEED, "opset": OPSET}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def read_sidecar(model_dir: Path, name: str) -> dict[str, Any] | None:
    """The sidecar's fields, or None if it is missing or unreadable (both mean: rebuild)."""
    try:
        data = json.loads(sidecar_path(model_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(model_dir: Path, name: str, fields: dict[str, Any]) -> Path:
    """Write `NAME.json` atomically: name, fingerprint, seed and opset, plus `fields`."""
    data = {
        "name": name,
        "fingerprint": fingerprint(name),
        "seed": MODEL_SEED,
        "opset": OPSET,
        **fields,
    }
    path = sidecar_path(model_dir, name)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path


def write_atomic(path: Path, payload: bytes) -> None:
    """Write via a temp file in the same directory and os.replace, so readers never see half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_current(model_dir: Path, name: str) -> bool:
    """True if `NAME.onnx` exists and its sidecar's fingerprint matches today's sources."""
    if not onnx_path(model_dir, name).is_file():
        return False
    sidecar = read_sidecar(model_dir, name)
    return sidecar is not None and sidecar.get("fingerprint") == fingerprint(name)


def missing_or_stale(model_dir: Path, names: Iterable[str]) -> list[str]:
    """The names, in the order given, whose ONNX file is missing or out of date."""
    return [name for name in names if not is_current(model_dir, name)]
