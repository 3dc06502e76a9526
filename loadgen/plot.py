"""A PNG of a run: ok req/s and p99 latency per second, with the router's re-plans marked.

matplotlib is optional (`pip install 'gpulet[plot]'`) and imported only here, only when asked.
"""

from __future__ import annotations

import math
from pathlib import Path

from loadgen.report import Report

INSTALL_HINT = "plotting needs matplotlib: pip install 'gpulet[plot]'"
FIGSIZE_IN = (10.0, 6.0)
DPI = 120


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_plot(report: Report, path: Path, *, title: str = "") -> None:
    """Two panels sharing the time axis; dashed lines at re-plans, the warm-up shaded."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(INSTALL_HINT) from exc

    # No pyplot: a Figure on the Agg canvas keeps no global state and needs no display.
    figure = Figure(figsize=FIGSIZE_IN)
    FigureCanvasAgg(figure)
    rate_ax, p99_ax = figure.subplots(2, 1, sharex=True)
    series = report.series
    edges_s = [b.start_s for b in series] + [series[-1].start_s + report.bucket_s]
    rate_ax.stairs([b.offered_rps for b in series], edges_s, label="offered", linestyle=":",
                   color="grey")  # fmt: skip
    rate_ax.stairs([b.ok_rps for b in series], edges_s, label="ok within SLO", color="tab:green")
    rate_ax.set_ylabel("req/s")
    p99s_ms = [math.nan if b.p99_ms is None else b.p99_ms for b in series]  # NaN: a gap
    p99_ax.stairs(p99s_ms, edges_s, color="tab:red", label="p99, all models")
    for stats in report.models:
        if stats.slo_ms is not None:
            p99_ax.axhline(stats.slo_ms, linestyle=":", linewidth=0.8, color="grey")
    p99_ax.set_ylabel("p99 latency (ms)")
    p99_ax.set_xlabel("time (s)")
    for ax in (rate_ax, p99_ax):
        if report.warmup_s > 0:
            ax.axvspan(0, report.warmup_s, color="grey", alpha=0.12, linewidth=0)
        for replan in report.replans:
            ax.axvline(replan.at_s, color="tab:blue", linestyle="--", linewidth=0.9)
        ax.grid(True, alpha=0.3)
    for replan in report.replans:
        label = f"v{replan.version}"
        rate_ax.annotate(label, (replan.at_s, 1.0), xycoords=("data", "axes fraction"),
                         fontsize=7, color="tab:blue", ha="left", va="top")  # fmt: skip
    rate_ax.legend(loc="upper left", fontsize=8)
    p99_ax.legend(loc="upper left", fontsize=8)
    if title:
        rate_ax.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
