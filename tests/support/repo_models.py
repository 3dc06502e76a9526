"""Small models the zoo does not have, built here from torch modules into a model repository in
Triton's layout, with the inputs to send them and ONNX Runtime's answers to compare with.

Each covers something a user's model may do: integer ids with a float mask, a uint8 image,
float16 in and out, two inputs and two outputs (int32 in, bool out), no batch axis, and a
config.pbtxt that fixes names and a max batch. Also the bad models of the repository tests.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tests.support.reference import reference_session

OPSET = 17
SEED = 20261124


class Tagger(nn.Module):
    """ids int64 [B, 12] and mask float32 [B, 12] -> scores float32 [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids) * mask.unsqueeze(-1)
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.head(pooled)  # type: ignore[no-any-return]


class Thumbs(nn.Module):
    """pixels uint8 [B, 3, 8, 8] -> probs float32 [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(pixels.float() / 255.0))
        return torch.softmax(self.fc(x.flatten(1)), dim=-1)


class HalfNet(nn.Module):
    """x float16 [B, 6] -> y float16 [B, 6]."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x.float())).half()


class Pair(nn.Module):
    """a float32 [B, 4] and n int32 [B, 4] -> total float32 [B, 4] and positive bool [B, 4]."""

    def forward(self, a: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = a * 2.0 + n.float()
        return total, total > 0


class Fixed(nn.Module):
    """No batch axis: x float32 [3, 5] -> y float32 [5]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight[:, None]).sum(0)


@dataclass(frozen=True)
class RepoModel:
    name: str
    inputs: dict[str, np.ndarray[Any, Any]]  # one request's inputs (with the batch axis if any)
    outputs: tuple[str, ...]
    batched: bool = True


def export(net: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
           outputs: list[str], *, batched: bool = True) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "batch"} for n in (*inputs, *outputs)} if batched else None
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), example, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes)  # fmt: skip


def build_repository(root: Path) -> dict[str, RepoModel]:
    """tagger (versions 1 and 2, both served), thumbs (with gpulet.toml), halfnet, pair (with a
    config.pbtxt), fixed (no batch axis)."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    models: dict[str, RepoModel] = {}

    ids = rng.integers(0, 50, (2, 12)).astype(np.int64)
    mask = (rng.random((2, 12)) > 0.3).astype(np.float32)
    for version in ("1", "2"):
        export(Tagger(), (torch.from_numpy(ids), torch.from_numpy(mask)),
               root / "tagger" / version / "model.onnx", ["ids", "mask"], ["scores"])  # fmt: skip
    (root / "tagger" / "config.pbtxt").write_text(
        'name: "tagger"\nversion_policy: { all { } }\n')
    models["tagger"] = RepoModel("tagger", {"ids": ids, "mask": mask}, ("scores",))

    pixels = rng.integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)
    export(Thumbs(), (torch.from_numpy(pixels),), root / "thumbs" / "1" / "model.onnx",
           ["pixels"], ["probs"])  # fmt: skip
    (root / "thumbs" / "gpulet.toml").write_text('slo_ms = 2000\ndescription = "tiny images"\n')
    models["thumbs"] = RepoModel("thumbs", {"pixels": pixels}, ("probs",))

    x16 = rng.standard_normal((2, 6)).astype(np.float16)
    export(HalfNet(), (torch.from_numpy(x16),), root / "halfnet" / "1" / "model.onnx", ["x"],
           ["y"])  # fmt: skip
    models["halfnet"] = RepoModel("halfnet", {"x": x16}, ("y",))

    a = rng.standard_normal((2, 4)).astype(np.float32)
    n = rng.integers(-3, 3, (2, 4)).astype(np.int32)
    export(Pair(), (torch.from_numpy(a), torch.from_numpy(n)), root / "pair" / "1" / "model.onnx",
           ["a", "n"], ["total", "positive"])  # fmt: skip
    (root / "pair" / "config.pbtxt").write_text(PAIR_CONFIG)
    models["pair"] = RepoModel("pair", {"a": a, "n": n}, ("total", "positive"))

    grid = rng.standard_normal((3, 5)).astype(np.float32)
    export(Fixed(), (torch.from_numpy(grid),), root / "fixed" / "1" / "model.onnx", ["x"], ["y"],
           batched=False)  # fmt: skip
    models["fixed"] = RepoModel("fixed", {"x": grid}, ("y",), batched=False)
    return models


PAIR_CONFIG = """
name: "pair"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "a", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "n", data_type: TYPE_INT32, dims: [ 4 ] }
]
output [
  { name: "total", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "positive", data_type: TYPE_BOOL, dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def reference(path: Path, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    """What ONNX Runtime, in this process, answers for the file."""
    session = reference_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs), strict=True))


def unsupported_op_model(path: Path) -> None:
    """A valid ONNX file whose one node is an operator no ONNX Runtime provider implements."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="org.gpulet.test")
    graph = helper.make_graph(
        [node], "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("org.gpulet.test", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
