"""Request bodies, built once per served model before a run so that sending costs no encoding.

Each body is a batch-1 input of zeros in the base64 object form of `POST /v1/infer`, with the
scenario's SLO and the served name (a scenario's `instance`, else the model) as `model`.
"""

from __future__ import annotations

import numpy as np
import orjson
import pybase64

from common.models import TensorSpec, spec_for
from common.scenarios import Scenario, ScenarioModel

BATCH = 1


def input_specs(model: str, *, simulated: bool = False) -> tuple[TensorSpec, ...]:
    """The inputs the router expects for `model`, on simulated devices or real ones."""
    return spec_for(model, simulated=simulated).inputs


def _tensor(spec: TensorSpec) -> dict[str, object]:
    shape = [BATCH, *spec.item_shape]
    zeros = np.zeros(shape, dtype=np.dtype(spec.dtype).newbyteorder("<"))
    return {
        "shape": shape,
        "dtype": spec.dtype,
        "data": pybase64.b64encode_as_string(zeros.tobytes()),
    }


def request_body(entry: ScenarioModel, *, simulated: bool = False) -> bytes:
    """The JSON body for one request to the scenario model `entry`."""
    inputs = {spec.name: _tensor(spec) for spec in input_specs(entry.model, simulated=simulated)}
    return orjson.dumps({"model": entry.name, "inputs": inputs, "slo_ms": entry.slo_ms})


def request_bodies(scenario: Scenario) -> dict[str, bytes]:
    """Served name -> its prebuilt body.

    A simulated scenario's router checks every model against the token signature
    (`common.models.spec_for`), so its bodies carry the token, catalog models included.
    """
    return {m.name: request_body(m, simulated=scenario.simulated) for m in scenario.models}
