"""e2e_peak's records and its report: trials and runs, the summary, the printed table (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.scenarios import Scenario


@dataclass(frozen=True)
class Trial:
    rate_rps: float  # r, scenario units
    fraction: float  # of the predicted r*
    sent_rps: float  # what the loadgen was asked to send in all, r x sum(weights) / K
    attainment: float
    per_model: dict[str, float]  # attainment per model
    errors: dict[str, int]
    p99_ms: float | None
    lateness_p99_ms: float | None  # the sender's: how late sends went out
    sender_cpu_share: float


@dataclass(frozen=True)
class Run:
    """One scheduler, one repeat."""

    scheduler: str
    predicted_rps: float
    measured_rps: float | None  # None: not even the lowest rate tried met the goal
    placement: list[str]  # the router's explanation of its plan
    trials: list[Trial]


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1]}


def show(values: Sequence[float], digits: int) -> str:
    if not values:
        return "n/a"
    s = spread(values)
    if len(values) == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def measured_of(runs: Sequence[Run], scheduler: str) -> list[float]:
    """The scheduler's measured peak per repeat (0 where no rate met the goal)."""
    return [r.measured_rps or 0.0 for r in runs if r.scheduler == scheduler]


def ratios(
    runs: Sequence[Run], predicted: Mapping[str, float]
) -> tuple[str, float, list[float]] | None:
    """first ÷ second scheduler: the predicted ratio, and the measured one per repeat; None
    unless exactly two schedulers both have a feasible plan."""
    names = list(predicted)
    if len(names) != 2 or not all(predicted[n] > 0 for n in names):
        return None
    first, second = (measured_of(runs, n) for n in names)
    measured = [a / b for a, b in zip(first, second, strict=True) if a and b]
    return " / ".join(names), predicted[names[0]] / predicted[names[1]], measured


def summary(runs: Sequence[Run], predicted: Mapping[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, expected in predicted.items():
        measured = measured_of(runs, name)
        out[name] = {
            "predicted_rps": expected,
            "measured_rps": spread(measured) if measured else None,
            "measured_over_predicted": spread([m / expected for m in measured])
            if measured else None,
        }  # fmt: skip
    found = ratios(runs, predicted)
    if found is not None:
        of, expected_ratio, measured = found
        out["ratio"] = {
            "of": of,
            "predicted": expected_ratio,
            "measured": spread(measured) if measured else None,
            "measured_over_predicted": spread([m / expected_ratio for m in measured])
            if measured else None,
        }  # fmt: skip
    return out


def render(scenario: Scenario, k: int, runs: Sequence[Run], predicted: Mapping[str, float]) -> str:
    weights = sum(m.weight for m in scenario.models)
    lines = [f"{scenario.name}: time scale K = {k}; r in scenario units (sent: r x "
             f"{weights:g} / K req/s in all); median [min-max] over repeats",
             f"  {'scheduler':11s} {'predicted r*':>12s} {'measured r':>22s} "
             f"{'sent req/s':>11s} {'measured/predicted':>24s}"]  # fmt: skip
    for name, expected in predicted.items():
        measured = measured_of(runs, name)
        if expected <= 0:
            lines.append(f"  {name:11s} {'none':>12s}  no feasible plan at any rate: not measured")
            continue
        sent = spread(measured)["median"] * weights / k
        lines.append(f"  {name:11s} {expected:12.0f} {show(measured, 0):>22s} {sent:11.0f} "
                     f"{show([m / expected for m in measured], 3):>24s}")  # fmt: skip
    if any(r.measured_rps is None for r in runs):
        lines.append("  (a measured r of 0: not even the lowest rate tried met the goal)")
    found = ratios(runs, predicted)
    if found is not None:
        of, expected_ratio, measured = found
        over = show([m / expected_ratio for m in measured], 3)
        lines.append(f"  {of}: predicted {expected_ratio:.3f}, measured {show(measured, 3)}, "
                     f"measured/predicted {over}")  # fmt: skip
    return "\n".join(lines)


def as_trial(report: dict[str, Any], rate: float, fraction: float, sent_rps: float) -> Trial:
    total = report["total"]
    latency, lateness = total.get("latency"), report.get("lateness")
    return Trial(
        rate_rps=rate, fraction=fraction, sent_rps=sent_rps, attainment=total["attainment"],
        per_model={m["model"]: m["attainment"] for m in report["models"]},
        errors=dict(total["errors"]), p99_ms=latency["p99_ms"] if latency else None,
        lateness_p99_ms=lateness["p99_ms"] if lateness else None,
        sender_cpu_share=report["sender"]["cpu_share"],
    )  # fmt: skip
