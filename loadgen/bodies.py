"""Request bodies, built once per served model before a run so that sending costs no encoding.

Each body is a batch-1 input of zeros in the base64 object form of `POST /v1/infer`, with the
scenario's SLO and the served name (a scenario's `instance`, else the model) as `model`.
"""

from __future__ import annotations

import numpy as np
import orjson
import pybase64

from common.models import BATCH_DIM, CATALOG, TensorSpec
from common.scenarios import Scenario, ScenarioModel

# Convention for models that exist only as a profile (simulated scenarios: vgg16, densenet201,
# inception_v3, ...): one float32 image input named "input", like the catalog's image models.
SIMULATED_INPUT = TensorSpec("input", "float32", (BATCH_DIM, 3, 224, 224))
BATCH = 1


def input_specs(model: str) -> tuple[TensorSpec, ...]:
    """The catalog's inputs for `model`, or the simulated-model convention when it has none."""
    spec = CATALOG.get(model)
    return spec.inputs if spec is not None else (SIMULATED_INPUT,)


def _tensor(spec: TensorSpec) -> dict[str, object]:
    shape = [BATCH, *spec.item_shape]
    zeros = np.zeros(shape, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    return {
        "shape": shape,
        "dtype": spec.dtype,
        "data": pybase64.b64encode_as_string(zeros.tobytes()),
    }


def request_body(entry: ScenarioModel) -> bytes:
    """The JSON body for one request to the scenario model `entry`."""
    inputs = {spec.name: _tensor(spec) for spec in input_specs(entry.model)}
    return orjson.dumps({"model": entry.name, "inputs": inputs, "slo_ms": entry.slo_ms})


def request_bodies(scenario: Scenario) -> dict[str, bytes]:
    """Served name -> its prebuilt body."""
    return {m.name: request_body(m) for m in scenario.models}
