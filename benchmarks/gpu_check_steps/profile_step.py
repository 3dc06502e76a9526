"""Steps `profile` and `fallback_profile`: `gpulet profile --nvidia` on the GPU, under MPS at
every size with co-located pairs, or (MPS unusable) the whole GPU time-sliced, into NAME.toml,
NAME.csv and NAME-interference.csv in the output folder."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import FAILED, OK, Context, StepResult, last_line_with, run_logged, stop_left_daemon
from .runner import tail as log_tail

PROFILE_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "bert_mini")
PROFILE_BATCHES = (1, 2, 4, 8, 16, 32)
MPS_SIZES = (20.0, 40.0, 50.0, 60.0, 80.0, 100.0)
WHOLE_GPU = (100.0,)
PAIRS = 6
# Left of the step's budget when pairs stop starting (`--max-seconds`): the last pair's two
# processes (torch import, CUDA context, one model, a >= 1 s window) and writing the files.
PAIR_RESERVE_S = 35.0
RATIO_MODEL, RATIO_BATCH = "resnet50", 32


@dataclass(frozen=True)
class ProfileAsk:
    step: str  # "profile" | "fallback_profile"
    name: str  # NAME of NAME.toml
    sizes: tuple[float, ...]
    pairs: int
    mps_off: bool = False  # MPS kept out on purpose (its daemon starts but serves no client)
    models: tuple[str, ...] = PROFILE_MODELS
    batches: tuple[int, ...] = PROFILE_BATCHES


def profile_command(ask: ProfileAsk, out: Path, budget_s: float) -> list[str]:
    return [sys.executable, "-m", "common.cli.main", "profile", "--nvidia",
            "--models", ",".join(ask.models),
            "--batches", ",".join(str(b) for b in ask.batches),
            "--sizes", ",".join(f"{s:g}" for s in ask.sizes),
            "--pairs", str(ask.pairs), "--name", ask.name, "--out", str(out),
            "--max-seconds", f"{max(0.0, budget_s - PAIR_RESERVE_S):.0f}"]  # fmt: skip


def run_profile(ctx: Context, budget_s: float, ask: ProfileAsk) -> StepResult:
    started = time.monotonic()
    log = ctx.logs / f"{ask.step}.log"
    command = profile_command(ask, ctx.out, budget_s)
    mps = ctx.no_mps_env(ask.step) if ask.mps_off else ctx.mps_env(ask.step)
    env = {**ctx.env, **mps, "GPULET_GPU_ENGINE": "torch"}
    done = run_logged(command, env, log, budget_s)
    left = stop_left_daemon(ctx, ask.step)
    files = [ctx.out / f"{ask.name}{suffix}"
             for suffix in (".toml", ".csv", "-interference.csv")]  # fmt: skip
    written = [f for f in files if f.exists()]
    figures: dict[str, Any] = {"command": " ".join(command[2:]).replace("common.cli.main",
                               "gpulet", 1), "name": ask.name, "left_daemon": left}  # fmt: skip
    if done.timed_out or done.returncode != 0 or not written:
        said = (last_line_with(log, "gpulet profile --nvidia:")
                or last_line_with(log, "MPS ") or log_tail(log, 3))  # fmt: skip
        why = (f"timed out after {budget_s:.0f}s" if done.timed_out
               else f"exited {done.returncode}")  # fmt: skip
        return StepResult(ask.step, FAILED, f"{why}: {said}", time.monotonic() - started,
                          figures, [ctx.rel(log)])  # fmt: skip
    figures.update(profile_figures(files[1].read_text(), _read(files[2])))
    figures["files"] = [ctx.rel(f) for f in written]
    summary = last_line_with(log, " points and ") or ""
    return StepResult(ask.step, OK, f"{summary}; {ratio_text(figures)}",
                      time.monotonic() - started, figures, [ctx.rel(log)])  # fmt: skip


def profile_figures(latency_csv: str, interference_csv: str | None) -> dict[str, Any]:
    """Points and pairs written, the provenance line, and resnet50 b32 at 20 % / 100 %."""
    rows = _rows(latency_csv)
    at = {(r["model"], int(r["batch"]), float(r["size_pct"])): float(r["latency_ms"])
          for r in rows}  # fmt: skip
    low, high = at.get((RATIO_MODEL, RATIO_BATCH, 20.0)), at.get((RATIO_MODEL, RATIO_BATCH, 100.0))
    provenance = next((line[2:] for line in latency_csv.splitlines()
                       if line.startswith("# Measured on")), None)  # fmt: skip
    return {
        "points": len(rows),
        "pairs": len(_rows(interference_csv)) if interference_csv else 0,
        "provenance": provenance,
        "resnet50_b32_ms": {"20": low, "100": high},
        "mps_ratio": round(low / high, 3) if low and high else None,
    }


def ratio_text(figures: Mapping[str, Any]) -> str:
    ratio = figures.get("mps_ratio")
    if ratio is None:
        return f"{RATIO_MODEL} b{RATIO_BATCH} 20%/100%: not in the profile"
    ms = figures["resnet50_b32_ms"]
    return (f"{RATIO_MODEL} b{RATIO_BATCH} 20%/100% = {ratio:.2f} ({ms['20']:.1f} ms / "
            f"{ms['100']:.1f} ms)")


def _rows(text: str) -> Sequence[dict[str, str]]:
    body = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(body)))


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
