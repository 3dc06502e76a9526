"""What `gpulet status` and `gpulet plan|peak --url` show (pure): the router's JSON answers and
metrics text in, one status document (what `--json` prints) and rich tables out.

Sources: `/v1/cluster` (agents, devices, gpu-let states, placement, re-plans), `/v1/models`
(SLOs, readiness, answers by outcome, measured rates), `/metrics` (SLO attainment, served
rates, busy share, queues) and `/v1/plan` (predicted latencies, the peak).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table
from rich.text import Text

REPLANS_SHOWN = 5  # the status table lists the latest re-plans

Labels = tuple[tuple[str, str], ...]


def metric_samples(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text -> {sample name: {sorted labels: value}}."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(samples: Mapping[str, Mapping[Labels, float]], name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def status_document(
    cluster: Mapping[str, Any],
    models: Mapping[str, Any],
    samples: Mapping[str, Mapping[Labels, float]],
) -> dict[str, Any]:
    """Everything `gpulet status` shows, as one JSON-ready document."""
    placement = cluster.get("placement") or {"version": 0, "gpulets": [], "unplaced": []}
    states = {g["gpulet_id"]: g for a in cluster["agents"] for g in a.get("gpulets", [])}
    gpulets = []
    for spec in placement["gpulets"]:
        gpulet_id = spec["gpulet_id"]
        gpulets.append({
            "gpulet_id": gpulet_id,
            "agent_id": spec["agent_id"],
            "device_id": spec["device_id"],
            "size": spec["size"],
            "cores": spec["cores"],
            "state": states.get(gpulet_id, {}).get("state", "absent"),
            "duty_cycle_ms": spec["duty_cycle_ms"],
            "busy_ratio": _value(samples, "gpulet_gpulet_busy_ratio", gpulet=gpulet_id),
            "models": [
                {**m, "served_rps": _value(samples, "gpulet_gpulet_served_requests_per_second",
                                           gpulet=gpulet_id, model=m["name"]),
                 "learned": states.get(gpulet_id, {}).get("learned", {}).get(m["name"])}
                for m in spec["models"]
            ],
        })  # fmt: skip
    planned_ids = {g["gpulet_id"] for g in gpulets}
    # Replaced gpu-lets an agent still runs (draining, or stopping) are listed too.
    retiring = [
        {"gpulet_id": i, "state": s["state"], "models": s.get("models", [])}
        for i, s in sorted(states.items())
        if i not in planned_ids
    ]
    rows = []
    for model in models["models"]:
        name = model["name"]
        outcomes = model.get("outcomes", {})
        rows.append({
            "name": name,
            "ready": model["ready"],
            "slo_ms": model["default_slo_ms"],
            "measured_rps": model.get("measured_rps", 0.0),
            "planned_rps": _value(samples, "gpulet_planned_requests_per_second", model=name),
            "requests": sum(outcomes.values()),
            "outcomes": outcomes,
            "slo_attainment": _value(samples, "gpulet_slo_attainment_ratio", model=name),
            "queued": _value(samples, "gpulet_queue_depth_requests", model=name),
        })  # fmt: skip
    return {
        "placement": {
            "version": placement["version"],
            "switching": cluster.get("switching"),
            "unplaced": placement.get("unplaced", []),
        },  # fmt: skip
        "agents": [
            {k: a.get(k) for k in ("agent_id", "url", "hostname", "profile_key", "devices")}
            for a in cluster["agents"]
        ],
        "gpulets": gpulets,
        "retiring": retiring,
        "models": rows,
        "replans": cluster.get("replans", [])[-REPLANS_SHOWN:],
    }


def status_tables(doc: Mapping[str, Any]) -> Group:
    placement = doc["placement"]
    head = Text(
        f"placement v{placement['version']}"
        + (" (switching)" if placement["switching"] else "")
        + f" · {len(doc['agents'])} agent(s) · {len(doc['gpulets'])} gpu-let(s)"
        + (f" · unplaced: {', '.join(placement['unplaced'])}" if placement["unplaced"] else "")
    )
    agents = _table("agents", "agent", "url", "devices", "profile")
    for a in doc["agents"]:
        devices = ", ".join(_device(d) for d in a["devices"] or [])
        agents.add_row(a["agent_id"], a["url"], devices, a["profile_key"] or "measuring")
    gpulets = _table("gpu-lets", "gpu-let", "device", "size", "state", "duty ms", "busy",
                     "model", "batch", "planned req/s", "served req/s", "learned ms",
                     "x profile")  # fmt: skip
    for g in doc["gpulets"]:
        shared = [g["gpulet_id"], f"{g['agent_id']}/{g['device_id']}", _size(g), g["state"],
                  f"{g['duty_cycle_ms']:.1f}", _share(g["busy_ratio"])]  # fmt: skip
        for i, m in enumerate(g["models"]):
            learned = m.get("learned") or {}
            gpulets.add_row(*_once(shared, i), m["name"], str(m["batch_size"]),
                            f"{m['planned_rps']:.1f}", _num(m["served_rps"]),
                            _num(learned.get("latency_ms"), "{:.2f}"),
                            _num(learned.get("factor"), "{:.2f}"))  # fmt: skip
    for r in doc["retiring"]:
        gpulets.add_row(r["gpulet_id"], "", "", f"{r['state']} (replaced)", "", "",
                        ", ".join(r["models"]), "", "", "", "", "")  # fmt: skip
    models = _table("models", "model", "ready", "SLO ms", "measured req/s", "planned req/s",
                    "requests", "not ok", "SLO attainment", "queued")  # fmt: skip
    for m in doc["models"]:
        failed = {c: n for c, n in m["outcomes"].items() if c != "ok"}
        models.add_row(
            m["name"], "yes" if m["ready"] else "no", f"{m['slo_ms']:g}",
            f"{m['measured_rps']:.1f}", _num(m["planned_rps"]), str(m["requests"]),
            ", ".join(f"{c} {n}" for c, n in sorted(failed.items())) or "-",
            _share(m["slo_attainment"]), _num(m["queued"], "{:.0f}"),
        )  # fmt: skip
    replans = _table("recent re-plans", "version", "reason", "step", "at", "switched in")
    for e in doc["replans"]:
        switched = e.get("serving_at_s")
        replans.add_row(
            str(e["version"]), e["reason"], e["step"],
            time.strftime("%H:%M:%S", time.localtime(e["at_s"])),
            "switching" if switched is None else f"{switched - e['at_s']:.2f} s",
        )  # fmt: skip
    return Group(head, agents, gpulets, models, replans)


def plan_table(title: str, gpulets: list[dict[str, Any]]) -> Table:
    """A plan's gpu-lets, one row per model: `/v1/plan`'s placement (gpu-let ids, batch
    latencies) or a planner's plan_json (devices only)."""
    live = any("gpulet_id" in g for g in gpulets)
    batch_column = ["batch ms"] if live else []
    table = _table(title, "gpu-let" if live else "device", "size", "duty ms", "busy", "model",
                   "batch", "req/s", *batch_column, "worst ms", "SLO ms")  # fmt: skip
    for g in gpulets:
        shared = [g["gpulet_id"] if live else g["device"], f"{g['size']:g}",
                  f"{g['duty_cycle_ms']:.1f}", _share(g.get("occupancy"))]  # fmt: skip
        for i, m in enumerate(g["models"]):
            batch_ms = [_num(m["batch_latency_ms"])] if live else []
            table.add_row(
                *_once(shared, i), m["name"], str(m["batch_size"] if live else m["batch"]),
                f"{m['planned_rps']:.1f}", *batch_ms, _num(m["worst_latency_ms"]),
                _num(m["slo_ms"], "{:g}"),
            )  # fmt: skip
    return table


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left")


def _once(cells: list[str], row: int) -> list[str]:
    """A gpu-let's own cells on its first model's row, blanks under them on the next ones."""
    return cells if row == 0 else [""] * len(cells)


def live_plan_view(body: Mapping[str, Any]) -> Group:
    head = Text(
        f"placement v{body['version']} · scheduler {body['scheduler']} · profile "
        f"{body['profile'] or '-'} · {body['interference']}"
        + (" · switching" if body["switching"] else "")
    )
    parts: list[Any] = [head, plan_table("gpu-lets (predicted)", body["gpulets"])]
    if body["unplaced"]:
        parts.append(Text(f"unplaced: {', '.join(body['unplaced'])}"))
    parts += [Text(f"  - {line}") for line in body["explanation"]]
    return Group(*parts)


def peak_view(peak: Mapping[str, Any]) -> Group:
    where = f"{peak['devices']} device(s) of {peak['agents']} agent(s)"
    if peak["peak_rps"] is None:
        return Group(Text(f"no peak on {where}: {peak.get('why', 'no feasible plan')}"))
    head = Text(
        f"peak r = {peak['peak_rps']:g} req/s per model ({peak['scheduler']} on {where}; "
        f"searched in {peak.get('seconds', 0.0):.2f} s)"
    )
    models = ", ".join(f"{m} (SLO {slo:g} ms)" for m, slo in sorted(peak["slos_ms"].items()))
    return Group(head, Text(f"models: {models}"),
                 plan_table("the plan at the peak", peak["plan"]["gpulets"]))  # fmt: skip


def _device(d: Mapping[str, Any]) -> str:
    if d["kind"] == "cpu":
        return f"{d['device_id']} ({len(d['cores'])} cores)"
    return f"{d['device_id']} ({d['kind']}{', ' + d['sharing'] if d.get('sharing') else ''})"


def _size(g: Mapping[str, Any]) -> str:
    return f"{len(g['cores'])} cores" if g["cores"] else f"{g['size']:g}%"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)
