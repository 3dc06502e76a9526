"""A repository model's served signature, from its ONNX graph and config.pbtxt (pure).

Without a config (or with one that leaves inputs out) the graph says it all, as Triton's
auto-complete reads it:
    1. names and element types of the graph's inputs (initializers left out) and outputs;
    2. the batch axis: axis 0 is a dynamic batch axis when it is symbolic (or unknown) on every
       input and output; then requests carry any batch up to GPULET_MAX_BATCH. Otherwise the model
       has no batch axis and serves one item per request, its whole shape as given;
    3. every other input dimension must be a fixed size: gpulet measures each model's latency at
       one shape per batch size and batches items of one shape, so a variable size is given one in
       config.pbtxt `dims` (outputs may keep variable sizes: -1).
A config's `max_batch_size` decides the batch axis instead (0: none; N > 0: the graph's axis 0
must be dynamic, and N bounds every request and batch); its inputs and outputs must name the
graph's own, with the same types, and dims that agree with the graph's fixed sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.models import BATCH_DIM, DYNAMIC_DIM, ModelSpec, TensorSpec
from common.repository.config import (
    CONFIG_FILE,
    ConfigTensor,
    GpuletOptions,
    ModelProblem,
    TritonConfig,
)
from common.repository.onnx_graph import Dim, GraphSignature, GraphTensor

# A repository model's default SLO when gpulet.toml gives none: loose enough for a large model on
# one CPU core at batch 1, so that a load succeeds and the user tightens it (slo_ms) knowingly.
DEFAULT_SLO_MS = 1000.0


def derive_spec(
    served_name: str,
    version: str,
    graph: GraphSignature,
    config: TritonConfig,
    options: GpuletOptions,
    *,
    model_file: str,
    config_file: str,
) -> ModelSpec:
    """The spec requests for `served_name` are checked against; ModelProblem says why not."""
    if graph.external_data:
        raise ModelProblem(model_file, f"tensor {graph.external_data[0]!r} keeps its data in "
                           "another file; gpulet serves single-file ONNX models (save it with "
                           "onnx.save(model, path, save_as_external_data=False))")  # fmt: skip
    for role, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        if not tensors:
            raise ModelProblem(model_file, f"the graph has no {role}s")
        for tensor in tensors:
            if tensor.kind != "tensor" or tensor.dtype is None:
                raise ModelProblem(model_file, f"{role} {tensor.name!r} is {tensor.type_name()}; "
                                   "gpulet serves numeric tensors (bool, int8..64, uint8..64, "
                                   "float16/32/64)")  # fmt: skip
    graph_batched = all(_dynamic_axis0(t) for t in (*graph.inputs, *graph.outputs))
    if config.max_batch_size is None:
        batched, max_batch = graph_batched, 0
    elif config.max_batch_size > 0:
        if not graph_batched:
            fixed = next(t for t in (*graph.inputs, *graph.outputs) if not _dynamic_axis0(t))
            raise ModelProblem(config_file, f"{config.max_batch_size} needs a dynamic batch axis "
                               f"(axis 0) in the graph, but {fixed.name!r} has shape "
                               f"{_shape_text(fixed.dims)}; use max_batch_size: 0",
                               "max_batch_size")  # fmt: skip
        batched, max_batch = True, config.max_batch_size
    else:
        batched, max_batch = False, 1
    if not batched:
        max_batch = 1
    inputs = _tensors("input", graph.inputs, config.inputs, batched, config_file, model_file)
    outputs = _tensors("output", graph.outputs, config.outputs, batched, config_file, model_file)
    for spec in inputs:
        open_axes = [i for i, d in enumerate(spec.item_shape) if d == DYNAMIC_DIM]
        if open_axes:
            where = config_file if config.inputs else model_file
            raise ModelProblem(where, f"input {spec.name!r} has a variable size at "
                               f"{'item ' if batched else ''}axis {open_axes[0]} "
                               f"({spec.describe()}); give it a size in {CONFIG_FILE} dims: "
                               "gpulet measures and batches one shape per model")  # fmt: skip
    return ModelSpec(
        name=served_name,
        inputs=inputs,
        outputs=outputs,
        default_slo_ms=options.slo_ms or DEFAULT_SLO_MS,
        description=options.description or f"{served_name} (version {version}, repository)",
        max_batch_size=max_batch,
        version=version,
    )


def _dynamic_axis0(tensor: GraphTensor) -> bool:
    return tensor.dims is not None and len(tensor.dims) >= 1 and not isinstance(tensor.dims[0], int)


def _shape_text(dims: tuple[Dim, ...] | None) -> str:
    if dims is None:
        return "[unknown]"
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in dims) + "]"


def _tensors(
    role: str,
    graph: Sequence[GraphTensor],
    declared: Sequence[ConfigTensor],
    batched: bool,
    config_file: str,
    model_file: str,
) -> tuple[TensorSpec, ...]:
    if declared:
        names = [t.name for t in graph]
        extra = [t.name for t in declared if t.name not in names]
        missing = [n for n in names if n not in {t.name for t in declared}]
        if extra or missing:
            parts = [f"{extra} are not in the graph"] if extra else []
            parts += [f"the graph's {missing} are missing"] if missing else []
            raise ModelProblem(config_file, f"{'; '.join(parts)} (the graph's {role}s: {names})",
                               role)  # fmt: skip
    by_name = {t.name: t for t in declared}
    specs: list[TensorSpec] = []
    for tensor in graph:
        dtype = tensor.dtype
        assert dtype is not None  # checked by the caller
        graph_dims = _graph_dims(tensor, batched, model_file)
        given = by_name.get(tensor.name)
        if given is None:
            dims = graph_dims
        else:
            where = f"{role} {tensor.name!r}"
            if given.dtype != dtype:
                raise ModelProblem(config_file, f"{given.dtype}, but the graph's {role} is "
                                   f"{dtype}", f"{where} data_type")  # fmt: skip
            dims = _agree(given.dims, graph_dims, f"{where} dims", config_file, batched)
        if dims is None:
            raise ModelProblem(model_file, f"{role} {tensor.name!r} has no shape in the graph; "
                               f"give its dims in {CONFIG_FILE}")  # fmt: skip
        shape = (BATCH_DIM, *dims) if batched else dims
        specs.append(TensorSpec(tensor.name, dtype, shape, batched))
    return tuple(specs)


def _graph_dims(tensor: GraphTensor, batched: bool, model_file: str) -> tuple[int, ...] | None:
    """The graph's sizes of one item (-1: variable); None when the graph gives no shape."""
    if tensor.dims is None:
        return None
    dims = tensor.dims[1:] if batched else tensor.dims
    return tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC_DIM for d in dims)


def _agree(
    given: tuple[int, ...],
    graph: tuple[int, ...] | None,
    field: str,
    config_file: str,
    batched: bool,
) -> tuple[int, ...]:
    """The config's dims where they fix what the graph leaves open; a clash is a problem."""
    if graph is None:
        return given
    if len(given) != len(graph):
        batch_note = " (without the batch axis, as max_batch_size > 0)" if batched else ""
        raise ModelProblem(config_file, f"{list(given)} has {len(given)} dimensions, the graph's "
                           f"{list(graph)} has {len(graph)}{batch_note}", field)  # fmt: skip
    merged: list[int] = []
    for axis, (mine, theirs) in enumerate(zip(given, graph, strict=True)):
        if mine != DYNAMIC_DIM and theirs != DYNAMIC_DIM and mine != theirs:
            raise ModelProblem(config_file, f"{list(given)} disagrees with the graph's "
                               f"{list(graph)} at axis {axis}", field)  # fmt: skip
        merged.append(theirs if mine == DYNAMIC_DIM else mine)
    return tuple(merged)
