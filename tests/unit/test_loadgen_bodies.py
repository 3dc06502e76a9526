"""loadgen's prebuilt bodies decode with the router's own parser, against the served signature."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from common.models import CATALOG, TOKEN_INPUT, ModelSpec, spec_for
from common.scenarios import ScenarioModel, load_scenario
from loadgen.bodies import input_specs, request_bodies, request_body
from router.http.codec import decode_request


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


def test_profile_only_models_take_the_token() -> None:
    assert input_specs("vgg16") == (TOKEN_INPUT,)
    body = request_body(ScenarioModel("vgg16", "vgg16", 142.0, 1.0))
    shapes, _ = _decode(body, spec_for("vgg16"))
    assert shapes == {"input": (1, 1)}


@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v2", "bert_mini", "vgg16"])
def test_on_simulated_devices_every_model_takes_the_token(model: str) -> None:
    """The body decodes against the spec a simulated system's router serves, catalog or not."""
    body = request_body(ScenarioModel(model, model, 64.0, 1.0), simulated=True)
    assert len(body) < 200  # bytes: a token, not a 600 KB image
    shapes, slo_ms = _decode(body, spec_for(model, simulated=True))
    assert shapes == {"input": (1, 1)}
    assert slo_ms == 64.0


SCENARIO = """\
[cluster]
kind = "{kind}"
[[models]]
name = "resnet50"
slo_ms = 108
"""


@pytest.mark.parametrize(("kind", "shape"), [("simulated", [1, 1]), ("cpu", [1, 3, 224, 224])])
def test_a_scenario_s_cluster_kind_picks_the_signature(
    tmp_path: Path, kind: str, shape: list[int]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(kind=kind))
    body = orjson.loads(request_bodies(load_scenario(path))["resnet50"])
    assert body["inputs"]["input"]["shape"] == shape
