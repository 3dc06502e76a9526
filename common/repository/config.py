"""A model folder's own files, parsed (pure): Triton's `config.pbtxt` (the subset gpulet honours)
and gpulet's `gpulet.toml`.

config.pbtxt, as Triton writes it:
    name, platform ("onnxruntime_onnx") or backend ("onnxruntime"), max_batch_size,
    input/output [{name, data_type: TYPE_FP32.., dims: [..]}], dynamic_batching {..},
    version_policy {latest {num_versions} | all {} | specific {versions: [..]}},
    default_model_filename.
Fields that do not apply to gpulet (instance_group, optimization, dynamic_batching's delays, ...)
are accepted and listed in `ignored`, so the caller can say so once. gpulet.toml:
    slo_ms = 100        # the model's default SLO
    rate_rps = 20       # its expected rate, when the served models are planned for declared rates
    description = "..."
Every problem is a ModelProblem naming the file and the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from common.repository import pbtxt

CONFIG_FILE = "config.pbtxt"
GPULET_FILE = "gpulet.toml"
DEFAULT_MODEL_FILE = "model.onnx"
ONNX_PLATFORMS = frozenset({"onnxruntime_onnx"})
ONNX_BACKENDS = frozenset({"onnxruntime", "onnx"})

# Triton's data_type enum -> numpy dtype name (TYPE_STRING and TYPE_BF16 have no numpy twin).
DATA_TYPES: dict[str, str] = {
    "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_UINT16": "uint16",
    "TYPE_UINT32": "uint32", "TYPE_UINT64": "uint64", "TYPE_INT8": "int8",
    "TYPE_INT16": "int16", "TYPE_INT32": "int32", "TYPE_INT64": "int64",
    "TYPE_FP16": "float16", "TYPE_FP32": "float32", "TYPE_FP64": "float64",
}  # fmt: skip
HONOURED = frozenset({"name", "platform", "backend", "max_batch_size", "input", "output",
                      "dynamic_batching", "version_policy", "default_model_filename"})  # fmt: skip
TENSOR_FIELDS = frozenset({"name", "data_type", "dims"})
GPULET_KEYS = frozenset({"slo_ms", "rate_rps", "description"})


class ModelProblem(ValueError):
    """Why a repository model cannot be served, naming the file (relative to the repository)
    and the field where there is one."""

    def __init__(self, file: str, message: str, field: str | None = None) -> None:
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)
        self.file = file
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ConfigTensor:
    name: str
    dtype: str
    dims: tuple[int, ...]  # without the batch axis when max_batch_size > 0


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    count: int = 1  # latest: how many of the newest
    versions: tuple[int, ...] = ()  # specific: which

    def choose(self, available: list[int]) -> list[int]:
        """The versions served, ascending, from the version folders found."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count:] if self.count > 0 else []

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.count}"
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return "all"


LATEST_ONE = VersionPolicy("latest", 1)


@dataclass(frozen=True)
class TritonConfig:
    max_batch_size: int | None  # None: not given (derived from the graph)
    inputs: tuple[ConfigTensor, ...]  # empty: not given
    outputs: tuple[ConfigTensor, ...]
    dynamic_batching: bool
    version_policy: VersionPolicy
    model_filename: str
    ignored: tuple[str, ...]  # fields accepted but not applied, e.g. "instance_group"


NO_CONFIG = TritonConfig(None, (), (), False, LATEST_ONE, DEFAULT_MODEL_FILE, ())


@dataclass(frozen=True)
class GpuletOptions:
    slo_ms: float | None = None
    rate_rps: float | None = None
    description: str = ""


def parse_config(text: str, file: str, model: str) -> TritonConfig:
    try:
        message = pbtxt.parse(text)
    except pbtxt.PbtxtError as exc:
        raise ModelProblem(file, f"not protobuf text format: {exc}") from None
    name = _one(message, "name", file, str)
    if name is not None and name != model:
        raise ModelProblem(file, f"{name!r} differs from the folder's name {model!r} (Triton "
                           "requires them equal)", "name")  # fmt: skip
    platform = _one(message, "platform", file, str)
    backend = _one(message, "backend", file, str)
    if platform is not None and platform not in ONNX_PLATFORMS:
        raise ModelProblem(file, f"{platform!r}: gpulet serves ONNX models (platform "
                           "\"onnxruntime_onnx\")", "platform")  # fmt: skip
    if backend is not None and backend not in ONNX_BACKENDS:
        raise ModelProblem(file, f"{backend!r}: gpulet serves ONNX models (backend "
                           "\"onnxruntime\")", "backend")  # fmt: skip
    max_batch = _one(message, "max_batch_size", file, int)
    if max_batch is not None and max_batch < 0:
        raise ModelProblem(file, f"{max_batch} must be >= 0", "max_batch_size")
    filename = _one(message, "default_model_filename", file, str) or DEFAULT_MODEL_FILE
    if "/" in filename or filename in ("", ".", ".."):
        raise ModelProblem(file, f"{filename!r}: a file name inside the version folder",
                           "default_model_filename")  # fmt: skip
    return TritonConfig(
        max_batch_size=max_batch,
        inputs=_tensors(message, "input", file),
        outputs=_tensors(message, "output", file),
        dynamic_batching="dynamic_batching" in message,
        version_policy=_policy(message, file),
        model_filename=filename,
        ignored=tuple(sorted(set(message) - HONOURED)) + _ignored_batching(message),
    )


def _ignored_batching(message: pbtxt.Message) -> tuple[str, ...]:
    batching = message.get("dynamic_batching", [])
    fields = sorted({k for b in batching if isinstance(b, dict) for k in b})
    return tuple(f"dynamic_batching.{k}" for k in fields)


def _tensors(message: pbtxt.Message, key: str, file: str) -> tuple[ConfigTensor, ...]:
    found: list[ConfigTensor] = []
    for i, entry in enumerate(message.get(key, [])):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ModelProblem(file, "must be a message {name, data_type, dims}", where)
        name = _one(entry, "name", file, str, where)
        if not name:
            raise ModelProblem(file, "has no name", where)
        where = f"{key} {name!r}"
        type_name = _one(entry, "data_type", file, str, where)
        if type_name is None:
            raise ModelProblem(file, "has no data_type", where)
        if type_name not in DATA_TYPES:
            raise ModelProblem(file, f"{type_name}: gpulet serves {', '.join(DATA_TYPES)}",
                               f"{where} data_type")  # fmt: skip
        dims = entry.get("dims", [])
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in dims):
            raise ModelProblem(file, f"{dims}: integers, -1 for a variable size", f"{where} dims")
        found.append(ConfigTensor(name, DATA_TYPES[type_name], tuple(dims)))
    return tuple(found)


def _policy(message: pbtxt.Message, file: str) -> VersionPolicy:
    entries = message.get("version_policy", [])
    if not entries:
        return LATEST_ONE
    policy = entries[-1]
    if not isinstance(policy, dict) or len(policy) != 1:
        raise ModelProblem(file, "one of latest {num_versions: N}, all {}, specific "
                           "{versions: [..]}", "version_policy")  # fmt: skip
    (kind, (body, *_)), = policy.items()
    body = body if isinstance(body, dict) else {}
    if kind == "all":
        return VersionPolicy("all")
    if kind == "latest":
        count = _one(body, "num_versions", file, int, "version_policy.latest")
        count = 1 if count is None else count
        if count < 1:
            raise ModelProblem(file, f"{count}: at least 1", "version_policy.latest.num_versions")
        return VersionPolicy("latest", count)
    if kind == "specific":
        versions = body.get("versions", [])
        if not versions or not all(isinstance(v, int) and v > 0 for v in versions):
            raise ModelProblem(file, f"{versions}: positive version numbers",
                               "version_policy.specific.versions")  # fmt: skip
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    raise ModelProblem(file, f"{kind!r}: use latest, all or specific", "version_policy")


def _one(message: pbtxt.Message, key: str, file: str, kind: type, where: str = "") -> Any:
    values = message.get(key, [])
    field = f"{where}.{key}" if where else key
    if len(values) > 1:
        raise ModelProblem(file, "given more than once", field)
    if not values:
        return None
    value = values[0]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ModelProblem(file, f"{value!r} is not an integer", field)
    if kind is str and not isinstance(value, str):
        raise ModelProblem(file, f"{value!r} is not text", field)
    return value


def parse_gpulet_toml(text: str, file: str) -> GpuletOptions:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelProblem(file, f"not valid TOML: {exc}") from None
    extra = sorted(set(data) - GPULET_KEYS)
    if extra:
        raise ModelProblem(file, f"unknown keys; use {sorted(GPULET_KEYS)}", ", ".join(extra))
    slo_ms = _number(data, "slo_ms", file, positive=True)
    rate_rps = _number(data, "rate_rps", file, positive=False)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ModelProblem(file, f"{description!r} is not text", "description")
    return GpuletOptions(slo_ms, rate_rps, description)


def _number(data: dict[str, Any], key: str, file: str, *, positive: bool) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
            positive and value == 0):  # fmt: skip
        raise ModelProblem(file, f"{value!r}: a number {'> 0' if positive else '>= 0'}", key)
    return float(value)
