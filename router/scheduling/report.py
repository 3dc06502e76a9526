"""Plans and peak results as text for people and as JSON for scripts (pure formatting)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from router.scheduling.types import Plan


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "scheduler": plan.scheduler,
        "feasible": plan.feasible,
        "devices_used": plan.devices_used,
        "shortfall_rps": plan.shortfall_rps,
        "gpulets": [
            {
                "device": g.device_id,
                "size": g.size,
                "duty_cycle_ms": round(g.duty_cycle_ms, 3),
                "occupancy": round(g.occupancy, 4),
                "slowdown": round(g.slowdown, 4),
                "models": [
                    {
                        "name": m.name,
                        "model": m.model,
                        "batch": m.batch,
                        "planned_rps": round(m.rate_rps, 3),
                        "worst_latency_ms": round(m.latency_ms, 3),
                        "slo_ms": m.slo_ms,
                    }
                    for m in g.models
                ],
            }
            for g in plan.gpulets
        ],
        "explanation": list(plan.explanation),
    }


def plan_text(plan: Plan, *, explain: bool = True) -> str:
    lines = [plan.explanation[0] if plan.explanation else plan.scheduler]
    by_device: dict[str, list[Any]] = defaultdict(list)
    for gpulet in plan.gpulets:
        by_device[gpulet.device_id].append(gpulet)
    for device, gpulets in by_device.items():
        used = sum(g.size for g in gpulets)
        lines.append(f"  {device}  ({used:g} of its capacity in {len(gpulets)} gpu-let(s))")
        for g in gpulets:
            lines.append(
                f"    size {g.size:>5g}  duty {g.duty_cycle_ms:7.1f} ms  busy {g.occupancy:4.0%}"
                + (f"  slowdown x{g.slowdown:.2f}" if g.slowdown > 1 else "")
            )
            for m in g.models:
                lines.append(
                    f"      {m.name:<16} batch {m.batch:>2}  {m.rate_rps:8.1f} req/s  "
                    f"worst {m.latency_ms:6.1f} ms / SLO {m.slo_ms:g} ms"
                )
    if plan.shortfall_rps:
        lines.append(
            "  unmet: "
            + ", ".join(f"{k} {v:.1f} req/s" for k, v in sorted(plan.shortfall_rps.items()))
        )
    if explain and len(plan.explanation) > 1:
        lines.append("  why:")
        lines += [f"    - {line}" for line in plan.explanation[1:]]
    return "\n".join(lines)


def peak_table(rows: list[dict[str, Any]]) -> str:
    """rows: {"scenario", "scheduler", "peak_rps", ...}; one line per row."""
    out = [f"{'scenario':<14}{'scheduler':<12}{'peak r':>10}{'plans':>7}{'seconds':>9}"]
    for row in rows:
        peak = row["peak_rps"]
        shown = "too large" if peak is None else f"{peak:g}"
        out.append(
            f"{row['scenario']:<14}{row['scheduler']:<12}{shown:>10}"
            f"{row.get('plans', 0):>7}{row.get('seconds', 0.0):>9.2f}"
        )
    return "\n".join(out)
