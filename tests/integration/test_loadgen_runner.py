"""loadgen's open-loop sender against a small aiohttp server on loopback that answers slowly."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from common.procs import free_port
from loadgen.arrivals import Arrival
from loadgen.report import CLIENT_OVERLOADED, CONNECTION_ERROR, build_report
from loadgen.runner import RunConfig, run_open_loop

pytestmark = pytest.mark.timeout(60)
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_S = 0.2  # every answer takes this long
GAP_S = 0.01  # requests are due this far apart: 20 would be in flight at once
CLI_TIMEOUT_S = 40.0


@dataclass
class FakeRouter:
    """Answers `/v1/infer` after SERVICE_S as the model name asks; counts concurrency."""

    url: str = ""
    inflight: int = 0
    peak_inflight: int = 0
    requests: int = 0
    cluster_version: int = 1
    bodies: list[bytes] = field(default_factory=list)


ANSWERS: dict[str, tuple[int, bytes]] = {
    "busy": (503, orjson.dumps({"error": {"code": "overloaded", "message": "queues full"}})),
    "bad": (400, orjson.dumps({"error": {"code": "bad_request", "message": "no"}})),
    "teapot": (500, b"not json"),
}


@pytest.fixture
async def fake_router() -> AsyncIterator[FakeRouter]:
    state = FakeRouter()

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        state.bodies.append(body)
        model = orjson.loads(body)["model"]
        state.requests += 1
        state.inflight += 1
        state.peak_inflight = max(state.peak_inflight, state.inflight)
        try:
            await asyncio.sleep(SERVICE_S)  # the fake's service time, not a wait; noqa: sleep-ok
        finally:
            state.inflight -= 1
        status, answer = ANSWERS.get(model, (200, orjson.dumps({"model": model})))
        return web.Response(status=status, body=answer, content_type="application/json")

    async def cluster(request: web.Request) -> web.Response:
        state.cluster_version += 1  # a re-plan between every two polls
        return web.json_response({"agents": [], "placement": {"version": state.cluster_version}})

    app = web.Application()
    app.router.add_post("/v1/infer", infer)
    app.router.add_get("/v1/cluster", cluster)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _config(url: str, models: list[str], **kwargs: object) -> RunConfig:
    bodies = {m: orjson.dumps({"model": m}) for m in models}
    return RunConfig(url=url, bodies=bodies, slo_ms=dict.fromkeys(models, 1000.0),
                     progress=False, **kwargs)  # type: ignore[arg-type]  # fmt: skip


async def test_sends_are_not_held_back_by_slow_answers(fake_router: FakeRouter) -> None:
    arrivals = [Arrival(i * GAP_S, "slow") for i in range(100)]
    result = await run_open_loop(arrivals, _config(fake_router.url, ["slow"], cluster_poll_s=None))
    assert len(result.records) == 100 and result.issued == 100
    assert fake_router.requests == 100
    assert all(r.status == 200 and r.code is None for r in result.records)
    assert all(r.latency_ms is not None and r.latency_ms >= SERVICE_S * 1000 * 0.95
               for r in result.records)  # fmt: skip
    # Closed loop would need 100 x 200 ms; open loop keeps ~20 in flight and ends in ~1.2 s.
    assert fake_router.peak_inflight >= 15
    assert result.elapsed_s < 3.0
    report = build_report(result.records, warmup_s=0.0, duration_s=1.0, models={"slow": 1000.0})
    assert report.lateness is not None and report.lateness.p99_ms < 20.0
    assert report.total.ok == 100 and report.total.attainment == 1.0


async def test_error_answers_keep_their_codes(fake_router: FakeRouter) -> None:
    models = ["ok", "busy", "bad", "teapot"]
    arrivals = [Arrival(i * GAP_S, m) for i, m in enumerate(models)]
    result = await run_open_loop(arrivals, _config(fake_router.url, models, cluster_poll_s=None))
    got = {r.model: (r.status, r.code) for r in result.records}
    assert got == {
        "ok": (200, None),
        "busy": (503, "overloaded"),
        "bad": (400, "bad_request"),
        "teapot": (500, "http_500"),
    }


async def test_no_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_open_loop([Arrival(0.0, "a")], _config(url, ["a"], cluster_poll_s=None))
    (record,) = result.records
    assert (record.status, record.code, record.latency_ms) == (0, CONNECTION_ERROR, None)


async def test_in_flight_bound_records_instead_of_blocking(fake_router: FakeRouter) -> None:
    arrivals = [Arrival(i * 0.005, "slow") for i in range(10)]  # all due within 50 ms
    config = _config(fake_router.url, ["slow"], cluster_poll_s=None, max_inflight=3)
    result = await run_open_loop(arrivals, config)
    codes = [r.code for r in result.records]
    assert codes == [None] * 3 + [CLIENT_OVERLOADED] * 7
    assert result.issued == 3 and fake_router.requests == 3


async def test_replans_are_noted_from_the_cluster_version(fake_router: FakeRouter) -> None:
    arrivals = [Arrival(i * 0.05, "ok") for i in range(10)]
    result = await run_open_loop(arrivals, _config(fake_router.url, ["ok"], cluster_poll_s=0.05))
    versions = [r.version for r in result.replans]
    assert len(versions) >= 2 and versions == sorted(versions)
    assert all(0 <= r.at_s <= result.elapsed_s for r in result.replans)


async def test_cli_writes_report_and_plot(fake_router: FakeRouter, tmp_path: Path) -> None:
    scenario = tmp_path / "one.toml"
    scenario.write_text(
        'name = "one"\n[cluster]\nkind = "cpu"\n[rate]\nmode = "sweep"\n'
        '[[models]]\nname = "noop"\ninstance = "fast"\nslo_ms = 150\nweight = 1.0\n'
    )
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    plot = importlib.util.find_spec("matplotlib") is not None
    args = ["loadgen", str(scenario), "--url", fake_router.url, "--rate", "50", "--duration",
            "2", "--seed", "3", "--out", str(out), "--quiet"]  # fmt: skip
    if plot:
        args += ["--plot", str(png)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "common.cli.main", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode == 0, stderr.decode()
    data = orjson.loads(out.read_bytes())
    # Every answer takes 200 ms against an SLO of 150 ms: all late, none ok.
    total = data["total"]
    assert total["sent"] > 0 and total["ok"] == 0 and total["late"] == total["sent"]
    assert data["models"][0]["model"] == "fast" and data["warmup_s"] == pytest.approx(0.2)
    assert data["sender"]["issued"] == data["sender"]["scheduled"] == fake_router.requests
    assert "fast" in stdout.decode() and "sender:" in stdout.decode()
    sent = orjson.loads(fake_router.bodies[0])
    assert sent["model"] == "fast" and sent["slo_ms"] == 150.0
    assert sent["inputs"]["input"]["shape"] == [1, 16]
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_cli_time_scale_divides_rates_and_multiplies_slos(
    fake_router: FakeRouter, tmp_path: Path
) -> None:
    import numpy as np

    from common.scenarios import load_scenario
    from loadgen.arrivals import schedule

    scenario = tmp_path / "one.toml"
    scenario.write_text('[rate]\nmode = "sweep"\n[[models]]\nname = "noop"\nslo_ms = 150\n')
    out = tmp_path / "report.json"
    args = ["loadgen", str(scenario), "--url", fake_router.url, "--rate", "100", "--duration",
            "2", "--seed", "3", "--time-scale", "4", "--out", str(out), "--quiet"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "common.cli.main", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode == 0, stderr.decode()
    # r = 100 on a device 4 times slower: 25 req/s, the arrivals of that rate with this seed.
    expected = schedule(load_scenario(scenario), 25.0, 2.0, np.random.default_rng(3))
    assert fake_router.requests == len(expected)
    data = orjson.loads(out.read_bytes())
    assert data["time_scale"] == 4.0
    # 200 ms answers: late against 150 ms, within the SLO x 4 that is sent and judged.
    assert data["models"][0]["slo_ms"] == 600.0
    assert data["total"]["late"] == 0 and data["total"]["ok"] == data["total"]["sent"] > 0
    assert {orjson.loads(b)["slo_ms"] for b in fake_router.bodies} == {600.0}
