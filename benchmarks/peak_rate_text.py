"""peak_rate.py's report text (pure formatting of the assembled results)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peak_rate_bounds import (
    BOUND_GAIN_SHARE_GOAL,
    IDEAL_RATIO_GOAL,
    PLAN_TIME_DUPLICATE,
    PLAN_TIME_PROFILE,
    PLAN_TIME_REPEATS,
    PLAN_TIME_SLO_FACTOR,
    TEMPORAL_NA,
    ratio,
)

# ---------------------------------------------------------------- formatting


def fmt_rate(value: float | None) -> str:
    return "too large" if value is None else f"{value:g}"


def fmt_ratio(value: float | None, na: str = "-") -> str:
    return na if value is None else f"{value:.3f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def scenario_report(entry: dict[str, Any], ks: Sequence[int]) -> list[str]:
    lines = []
    limited = entry["temporal_data_limited"]
    a100 = entry["goal_a_applies"]
    for k in ks:
        block = entry["by_k"][str(k)]
        lines.append("")
        lines.append(
            f"== {entry['scenario']}  ({entry['profile']}, {entry['devices']} devices, "
            f"step {entry['step_rps']:g} req/s)  max {k} gpu-lets per device"
        )
        lines.append(
            f"  {'scheduler':<12}{'peak r':>10}{'/ temporal':>12}{'/ ideal':>9}"
            f"{'devices':>9}{'plans':>7}{'seconds':>9}"
        )
        for row in block["rows"]:
            to_t = "n/a" if limited else fmt_ratio(row["ratio_to_temporal"])
            lines.append(
                f"  {row['scheduler']:<12}{fmt_rate(row['peak_rps']):>10}{to_t:>12}"
                f"{fmt_ratio(row['ratio_to_ideal']):>9}{row['devices_used'] or '-':>9}"
                f"{row['plans']:>7}{row['seconds']:>9.2f}"
            )
        if limited:
            lines.append(f"  ratios to temporal: {TEMPORAL_NA}")
        b = block["bounds"]
        gain = "n/a" if limited else f"x{b['bound_gain']:.3f}"
        gain_int = "n/a" if limited else f"x{b['bound_int_gain']:.3f}"
        lines.append(f"  fluid bound, whole devices (temporal bound): {b['bound_temporal']:9.1f}")
        lines.append(
            f"  fluid bound, <= {k} gpu-lets (bound_k):       {b['bound_k']:9.1f}   "
            f"the bound's gain over the temporal bound: {gain}"
        )
        lines.append(
            f"  interference-aware bound (context):          {b['bound_int']:9.1f}   "
            f"its gain: {gain_int}"
        )
        peaks = block["peaks"]
        context = [
            f"temporal peak / temporal bound {fmt_ratio(b['temporal_efficiency'], 'n/a')}",
            f"gpulet+int / bound_k {fmt_ratio(ratio(peaks.get('gpulet+int'), b['bound_k']))}",
            f"gpulet+int / int-aware bound "
            f"{fmt_ratio(ratio(peaks.get('gpulet+int'), b['bound_int']))}",
        ]
        lines.append("  " + "; ".join(context))
        ga = block["goal_a"]
        if a100 and not limited:
            share = ga["share"]
            verdict = "n/a" if share is None else ("PASS" if ga["pass"] else "MISS")
            shortfall = (
                f" (short by {BOUND_GAIN_SHARE_GOAL - share:.3f})"
                if share is not None and not ga["pass"]
                else ""
            )
            lines.append(
                f"  goal (a) gpulet+int gain over temporal x{ga['gi_gain']:.3f} vs the bound's "
                f"gain x{b['bound_gain']:.3f}: share {fmt_ratio(share)} "
                f"(goal >= {BOUND_GAIN_SHARE_GOAL:.2f}) {verdict}{shortfall}"
            )
            lines.append(
                f"           against the measured temporal peak: bound_k / peak_temporal "
                f"x{ga['bound_over_peak_t']:.3f}, share "
                f"{fmt_ratio(ga['share_vs_peak_t'])} (context)"
            )
        else:
            why = "no 100 % data above batch 1" if limited else "not an a100 scenario"
            lines.append(f"  goal (a) n/a: {why}")
        gb = block["goal_b"]
        if gb["ratio"] is None:
            lines.append(f"  goal (b) gpulet+int / ideal: n/a (ideal {gb['ideal_state']})")
        else:
            verdict = "PASS" if gb["pass"] else "MISS"
            shortfall = "" if gb["pass"] else f" (short by {IDEAL_RATIO_GOAL - gb['ratio']:.3f})"
            lines.append(
                f"  goal (b) gpulet+int / ideal = {gb['ratio']:.3f} "
                f"(goal >= {IDEAL_RATIO_GOAL:.2f}) {verdict}{shortfall}"
            )
    return lines


def summary_report(entries: list[dict[str, Any]], ks: Sequence[int]) -> list[str]:
    lines = ["", "== summary (peak r; share = share of the bound's gain; b = gpulet+int / ideal)"]
    lines.append(
        f"  {'scenario':<12}{'k':>2}{'temporal':>10}{'gpulet':>8}{'g+int':>8}{'ideal':>10}"
        f"{'bnd_t':>9}{'bnd_k':>9}{'bnd_int':>9}{'gain':>7}{'share':>7}{'a':>6}{'b':>7}{'':>5}"
    )
    for entry in entries:
        limited = entry["temporal_data_limited"]
        for k in ks:
            block = entry["by_k"][str(k)]
            p, b, ga, gb = block["peaks"], block["bounds"], block["goal_a"], block["goal_b"]
            gain = "n/a" if limited else f"{b['bound_gain']:.3f}"
            share = ga["share"]
            a_verdict = "n/a" if share is None else ("PASS" if ga["pass"] else "MISS")
            b_verdict = "n/a" if gb["ratio"] is None else ("PASS" if gb["pass"] else "MISS")
            lines.append(
                f"  {entry['scenario']:<12}{k:>2}{fmt_rate(p.get('temporal')):>10}"
                f"{fmt_rate(p.get('gpulet')):>8}{fmt_rate(p.get('gpulet+int')):>8}"
                f"{fmt_rate(p.get('ideal')) if 'ideal' in p else 'skipped':>10}"
                f"{b['bound_temporal']:>9.1f}{b['bound_k']:>9.1f}{b['bound_int']:>9.1f}"
                f"{gain:>7}{fmt_ratio(share, 'n/a'):>7}{a_verdict:>6}"
                f"{fmt_ratio(gb['ratio'], 'n/a'):>7}{b_verdict:>5}"
            )
    return lines


def gpulets_report(comparison: list[dict[str, Any]], low: int, high: int) -> list[str]:
    lines = [
        "",
        f"== more than two gpu-lets: peak r with at most {low} vs {high} gpu-lets per device",
        f"  {'scenario':<12}{'scheduler':<12}{f'k={low}':>10}{f'k={high}':>10}"
        f"{'change':>9}  k={high} plans",
    ]
    for row in comparison:
        change = ratio(row["high"], row["low"])
        lines.append(
            f"  {row['scenario']:<12}{row['scheduler']:<12}{fmt_rate(row['low']):>10}"
            f"{fmt_rate(row['high']):>10}{fmt_ratio(change, 'n/a'):>9}  {row['verdict']}"
        )
    return lines


def plan_time_report(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"== plan time: {PLAN_TIME_PROFILE}, {rows[0]['models'] if rows else 0} models "
        f"(its models + a second {PLAN_TIME_DUPLICATE}), SLO = {PLAN_TIME_SLO_FACTOR:g} x "
        f"batch-1 latency at 100 % x 1.1; {PLAN_TIME_REPEATS} repeats, one interference model "
        "held across them (as the router does)",
        f"  {'k':>2}{'devices':>8}{'rate':>6}{'req/s/model':>12}  {'scheduler':<12}"
        f"{'median ms':>10}{'min-max ms':>18}{'feasible':>9}{'used':>6}  goal",
    ]
    for row in rows:
        verdict = "PASS" if row["pass"] else "MISS"
        span = f"{fmt_ms(row['min_s'])}-{fmt_ms(row['max_s'])}"
        lines.append(
            f"  {row['k']:>2}{row['devices']:>8}{row['fraction_of_bound']:>6.1f}"
            f"{row['rate_per_model_rps']:>12.1f}  {row['scheduler']:<12}"
            f"{fmt_ms(row['median_s']):>10}{span:>18}{('yes' if row['feasible'] else 'no'):>9}"
            f"{row['devices_used']:>6}  < {fmt_ms(row['goal_s'])} ms {verdict}"
        )
    lines.append(
        "  (rate = share of the fluid bound with the same k; used = devices the plan uses)"
    )
    return lines
