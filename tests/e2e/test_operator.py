"""The operator's view of a running system: `/metrics` parsed by Prometheus's own parser after
known traffic, and `gpulet status` / `gpulet plan|peak --url` against the same router.

Simulated GPUs (TIME_SCALE times slower than the profile) at declared rates: the plan stays put
while the tests run, so counts can be checked exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.cli.main import main
from common.cluster import AgentInfo
from common.profiles import find_profile
from router.scheduling.live import plan_live
from router.scheduling.offline import interference_for
from tests.e2e.conftest import running
from tests.support import http
from tests.support.system import RunningSystem

pytestmark = pytest.mark.timeout(120)
TIME_SCALE = 10
SLOS_MS = {"resnet50": 108.0 * TIME_SCALE, "vgg16": 142.0 * TIME_SCALE}
SIMULATED = {"GPULET_SIMULATED_PROFILE": "a100-class", "GPULET_SIMULATED_DEVICES": "2"}
TOKEN = {"input": [[0.0]]}  # a simulated model's input: one token per item
REQUESTS = 8

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def sim(redis_url: str, model_dir: Path) -> Iterator[RunningSystem]:
    slos = ",".join(f"{name}={ms:g}" for name, ms in SLOS_MS.items())
    yield from running(
        redis_url, model_dir, models=tuple(SLOS_MS),
        agent_env={**SIMULATED, "GPULET_SIM_TIME_SCALE": str(TIME_SCALE)},
        router_env={**SIMULATED, "GPULET_SLOS": slos, "GPULET_RATES": "resnet50=5,vgg16=5"},
    )  # fmt: skip


def scrape(sim: RunningSystem) -> Samples:
    answer = http.request("GET", sim.url + "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.body
    assert isinstance(text, str)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))  # fmt: skip


def infer(sim: RunningSystem, model: str, **extra: object) -> http.Answer:
    return sim.post("/v1/infer", {"model": model, "inputs": TOKEN, **extra})


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


def test_metrics_after_known_traffic(sim: RunningSystem) -> None:
    before = scrape(sim)
    started = time.monotonic()
    for _ in range(REQUESTS):
        for model in SLOS_MS:
            assert infer(sim, model).status == 200
    elapsed_s = time.monotonic() - started
    refused = infer(sim, "vgg16", slo_ms=1)
    assert refused.code == "slo_unattainable"
    after = scrape(sim)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    for model in SLOS_MS:
        assert delta("gpulet_requests_total", model=model, code="ok") == REQUESTS
        assert delta("gpulet_request_latency_seconds_count", model=model) == REQUESTS
        # One at a time: the router's latencies add up to less than the client's wall time.
        assert 0 < delta("gpulet_request_latency_seconds_sum", model=model) < elapsed_s
        assert delta("gpulet_requests_within_slo_total", model=model) == REQUESTS
        # Every answer ok was one item in exactly one batch, served by one gpu-let.
        assert delta("gpulet_batch_size_items_sum", model=model) == REQUESTS
        assert delta("gpulet_gpulet_served_requests_total", model=model) == REQUESTS
        assert get(after, "gpulet_queue_depth_requests", model=model) == 0
        assert get(after, "gpulet_measured_requests_per_second", model=model) > 0
        assert get(after, "gpulet_model_ready", model=model) == 1
        requests = total(after, "gpulet_requests_total", model=model)
        assert get(after, "gpulet_slo_attainment_ratio", model=model) == pytest.approx(
            get(after, "gpulet_requests_within_slo_total", model=model) / requests
        )
    assert delta("gpulet_requests_total", model="vgg16", code="slo_unattainable") == 1
    # Each gpu-let was busy for part of the traffic's wall time (batches overlap only once).
    busy = [dict(ls)["gpulet"] for n, ls in after if n == "gpulet_gpulet_busy_seconds_total"]
    assert busy
    assert all(0 < delta("gpulet_gpulet_busy_seconds_total", gpulet=g) < elapsed_s for g in busy)
    assert all(0 <= v <= 1 for (n, _), v in after.items() if n == "gpulet_gpulet_busy_ratio")

    cluster = sim.get("/v1/cluster").body
    placement = cluster["placement"]
    assert get(after, "gpulet_placement_version") == placement["version"]
    assert get(after, "gpulet_agents_up") == 1
    assert total(after, "gpulet_replans_total") == len(cluster["replans"])
    for gpulet in placement["gpulets"]:
        for m in gpulet["models"]:
            planned = get(after, "gpulet_gpulet_planned_requests_per_second",
                          gpulet=gpulet["gpulet_id"], model=m["name"])  # fmt: skip
            assert planned == m["planned_rps"]
    for model in SLOS_MS:
        assert get(after, "gpulet_planned_requests_per_second", model=model) == pytest.approx(
            total(after, "gpulet_gpulet_planned_requests_per_second", model=model)
        )


def test_status_shows_agents_gpulets_and_models(
    sim: RunningSystem, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for model in SLOS_MS:
        assert infer(sim, model).status == 200
    cluster = sim.get("/v1/cluster").body
    [agent] = cluster["agents"]
    gpulet_ids = {g["gpulet_id"] for g in cluster["placement"]["gpulets"]}
    code, out = run_cli(["status", "--url", sim.url, "--json"], capsys)
    assert code == 0
    doc = orjson.loads(out)
    assert [a["agent_id"] for a in doc["agents"]] == [agent["agent_id"]]
    assert [d["device_id"] for d in doc["agents"][0]["devices"]] == ["sim0", "sim1"]
    assert {g["gpulet_id"] for g in doc["gpulets"]} == gpulet_ids
    assert {g["state"] for g in doc["gpulets"]} == {"ready"}
    assert doc["placement"]["version"] == cluster["placement"]["version"]
    models = {m["name"]: m for m in doc["models"]}
    assert set(models) == set(SLOS_MS)
    for name, model in models.items():
        assert model["slo_ms"] == SLOS_MS[name]
        assert model["ready"] and model["requests"] >= 1
        assert 0 < model["slo_attainment"] <= 1
        assert model["planned_rps"] > 0

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables to the terminal's width
    code, out = run_cli(["status", "--url", sim.url], capsys)
    assert code == 0
    for shown in (agent["agent_id"], *gpulet_ids, *SLOS_MS, "SLO attainment", "re-plans"):
        assert shown in out


def test_plan_url_predicts_the_running_gpulets(
    sim: RunningSystem, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    placement = sim.get("/v1/cluster").body["placement"]
    code, out = run_cli(["plan", "--url", sim.url, "--json"], capsys)
    assert code == 0
    plan = orjson.loads(out)
    assert plan["version"] == placement["version"]
    assert plan["scheduler"] == "gpulet+int" and plan["profile"] == "a100-class"
    assert [g["gpulet_id"] for g in plan["gpulets"]] == \
        [g["gpulet_id"] for g in placement["gpulets"]]  # fmt: skip
    for gpulet in plan["gpulets"]:
        assert 0 < gpulet["occupancy"] <= 1
        for m in gpulet["models"]:
            assert m["slo_ms"] == SLOS_MS[m["name"]]
            assert 0 < m["batch_latency_ms"] < m["worst_latency_ms"] <= m["slo_ms"]
    monkeypatch.setenv("COLUMNS", "250")
    code, out = run_cli(["plan", "--url", sim.url], capsys)
    assert code == 0
    assert all(g["gpulet_id"] in out for g in placement["gpulets"]) and "worst ms" in out


def test_peak_url_is_the_equal_rate_search_on_the_live_devices(
    sim: RunningSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(["peak", "--url", sim.url, "--json"], capsys)
    assert code == 0
    peak = orjson.loads(out)
    assert (peak["agents"], peak["devices"], peak["slos_ms"]) == (1, 2, SLOS_MS)
    # The same search offline, on the agent's devices and the profile it runs (time-scaled).
    agents = sim.get("/v1/cluster").body["agents"]
    profile = find_profile("a100-class").time_scaled(TIME_SCALE)
    expected = plan_live([AgentInfo.from_json(a) for a in agents], profile, SLOS_MS, {},
                         "gpulet+int", interference=interference_for(profile)[0])  # fmt: skip
    assert expected is not None
    assert peak["peak_rps"] == expected.rate_rps > 0
    code, out = run_cli(["peak", "--url", sim.url], capsys)
    assert code == 0 and f"peak r = {expected.rate_rps:g} req/s per model" in out
