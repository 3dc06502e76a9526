"""loadgen's prebuilt bodies decode with the router's own parser."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from common.models import CATALOG, ModelSpec
from common.scenarios import ScenarioModel
from loadgen.bodies import SIMULATED_INPUT, input_specs, request_body
from router.codec import decode_request


def _decode(body: bytes, spec: ModelSpec) -> tuple[dict[str, tuple[int, ...]], float | None]:
    data = orjson.loads(body)
    parsed = decode_request(data, {data["model"]: spec}, max_batch=1)
    return {n: tuple(a.shape) for n, a in parsed.inputs.items()}, parsed.slo_ms


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_catalog_models_get_a_valid_batch_of_one(model: str) -> None:
    spec = CATALOG[model]
    shapes, slo_ms = _decode(request_body(ScenarioModel(model, model, 42.0, 1.0)), spec)
    assert shapes == {t.name: (1, *t.item_shape) for t in spec.inputs}
    assert slo_ms == 42.0


def test_an_instance_is_sent_under_its_served_name() -> None:
    body = orjson.loads(request_body(ScenarioModel("lenet-b", "lenet", 5.0, 1.0)))
    assert body["model"] == "lenet-b"
    assert body["inputs"]["input"]["shape"] == [1, 1, 28, 28]
    assert isinstance(body["inputs"]["input"]["data"], str)  # base64 form


def test_profile_only_models_follow_the_simulated_convention() -> None:
    assert input_specs("vgg16") == (SIMULATED_INPUT,)
    spec = replace(CATALOG["resnet50"], name="vgg16")  # what a simulated device would declare
    shapes, _ = _decode(request_body(ScenarioModel("vgg16", "vgg16", 142.0, 1.0)), spec)
    assert shapes == {"input": (1, 3, 224, 224)}
