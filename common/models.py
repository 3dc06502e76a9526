"""The model catalog: each zoo model's signature and default SLO.

Pure data, no torch and no onnxruntime: the router validates requests against these signatures,
the agent checks what it loads against them, and `common.modelzoo` builds the ONNX files that
match them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# A dimension of -1 is the dynamic batch axis; it is always axis 0.
BATCH_DIM = -1


# A dimension a model leaves open (an output's size that depends on the data); never an input's.
DYNAMIC_DIM = -1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[int, ...]  # batched: the batch axis first, as BATCH_DIM; else the whole shape
    # False for a model without a batch axis (served one item at a time): `shape` is the tensor's
    # whole shape, and requests carry it so; inside gpulet it still travels as a batch of one.
    batched: bool = True

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item, without the batch axis."""
        return self.shape[1:] if self.batched else self.shape

    def describe(self) -> str:
        dims = ", ".join("batch" if d == BATCH_DIM and i == 0 and self.batched else
                         "?" if d == DYNAMIC_DIM else str(d)
                         for i, d in enumerate(self.shape))  # fmt: skip
        return f"{self.dtype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "batched": self.batched}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]),
                   bool(data.get("batched", True)))  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the served name: a model's, or "model@version" for another served version
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    default_slo_ms: float
    description: str
    # The most items one request or batch may carry (a repository model's config.pbtxt
    # max_batch_size; 1 without a batch axis); 0: no limit of the model's own (GPULET_MAX_BATCH).
    max_batch_size: int = 0
    version: str = "1"  # the repository version this spec serves

    @property
    def batched(self) -> bool:
        return all(t.batched for t in self.inputs)

    def batch_limit(self, configured: int) -> int:
        """The largest batch a request may carry: the model's own limit within `configured`."""
        return min(configured, self.max_batch_size) if self.max_batch_size else configured

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "default_slo_ms": self.default_slo_ms,
            "description": self.description,
            "max_batch_size": self.max_batch_size,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            name=str(data["name"]),
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            default_slo_ms=float(data["default_slo_ms"]),
            description=str(data.get("description", "")),
            max_batch_size=int(data.get("max_batch_size", 0)),
            version=str(data.get("version", "1")),
        )


def _image_model(name: str, slo_ms: float, description: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        inputs=(TensorSpec("input", "float32", (BATCH_DIM, 3, 224, 224)),),
        outputs=(TensorSpec("output", "float32", (BATCH_DIM, 1000)),),
        default_slo_ms=slo_ms,
        description=description,
    )


BERT_SEQ_LEN = 128
NOOP_WIDTH = 16

# Default SLOs are roughly 3-5x the measured one-core batch-1 ONNX Runtime latency on this
# machine class (reference/machine-notes.md section 3), as the cpu-*.toml scenarios set them.
CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="lenet",
            inputs=(TensorSpec("input", "float32", (BATCH_DIM, 1, 28, 28)),),
            outputs=(TensorSpec("output", "float32", (BATCH_DIM, 10)),),
            default_slo_ms=5.0,
            description="LeNet-5, 1x28x28 grey image -> 10 class scores",
        ),
        _image_model("mobilenet_v2", 60.0, "MobileNetV2 (width 1.0), 3x224x224 -> 1000 scores"),
        _image_model("resnet18", 200.0, "ResNet-18, 3x224x224 -> 1000 scores"),
        _image_model("resnet50", 400.0, "ResNet-50, 3x224x224 -> 1000 scores"),
        ModelSpec(
            name="bert_mini",
            inputs=(
                TensorSpec("input_ids", "int64", (BATCH_DIM, BERT_SEQ_LEN)),
                TensorSpec("attention_mask", "int64", (BATCH_DIM, BERT_SEQ_LEN)),
            ),
            outputs=(TensorSpec("logits", "float32", (BATCH_DIM, 2)),),
            default_slo_ms=60.0,
            description="BERT-mini encoder (4 layers, hidden 256, seq 128) -> 2-way classifier",
        ),
        ModelSpec(
            name="noop",
            inputs=(TensorSpec("input", "float32", (BATCH_DIM, NOOP_WIDTH)),),
            outputs=(TensorSpec("output", "float32", (BATCH_DIM, NOOP_WIDTH)),),
            default_slo_ms=10.0,
            description="identity on 16 floats: measures serving overhead",
        ),
    )
}


def model_names() -> list[str]:
    return sorted(CATALOG)


# Models that only a device profile knows (vgg16, densenet201, ... on simulated GPUs) have no
# ONNX file here, and no default SLO of their own.
PROFILE_MODEL_SLO_MS = 100.0
# A simulated device takes its time from the profile (latency per model, batch and partition),
# never from the payload, so requests to it carry one float per item and answers one float back:
# a few bytes where an image costs 600 KB to send, decode and batch. That is what lets one small
# machine drive a fast GPU's request rates through the real router.
TOKEN_INPUT = TensorSpec("input", "float32", (BATCH_DIM, 1))
TOKEN_OUTPUT = TensorSpec("output", "float32", (BATCH_DIM, 1))


def profile_model_spec(name: str, slo_ms: float = PROFILE_MODEL_SLO_MS) -> ModelSpec:
    """A model only a profile knows: the token signature (simulated devices alone serve it)."""
    return ModelSpec(
        name=name,
        inputs=(TOKEN_INPUT,),
        outputs=(TOKEN_OUTPUT,),
        default_slo_ms=slo_ms,
        description=f"{name} (from a device profile; simulated: token in, token out)",
    )


def spec_for(name: str, *, simulated: bool = False) -> ModelSpec:
    """The signature requests for `name` are checked against.

    The catalog's spec on real devices. When the system serves simulated devices
    (`CommonSettings.simulated_profile` set; a scenario of kind "simulated"), every model takes
    the token signature, catalog models included (resnet50 on an a100-class profile is a
    profile row, not an ONNX file), keeping the catalog's default SLO. Models outside the
    catalog take the token signature either way.
    """
    spec = CATALOG.get(name)
    if spec is None:
        return profile_model_spec(name)
    if not simulated:
        return spec
    return replace(
        spec,
        inputs=(TOKEN_INPUT,),
        outputs=(TOKEN_OUTPUT,),
        description=f"{name} (simulated: token in, token out)",
    )
