"""The summary of a gpu_check run: summary.json (everything the steps found) and summary.md (a
table a person reads), rewritten after every step so that a run stopped midway still has one;
and the logs packed into one file (the device tool brings back at most 8 files)."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .runner import StepResult

STEP_ORDER = ("env", "pytest", "profile", "e2e", "fallback_profile", "fallback_e2e")
LOGS_ARCHIVE = "logs.tar.gz"


def write_summary(out: Path, meta: Mapping[str, Any], steps: Mapping[str, StepResult]) -> str:
    """Write summary.json and summary.md; return the markdown."""
    doc = {"meta": dict(meta), "steps": {n: steps[n].to_json() for n in STEP_ORDER if n in steps}}
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = render(meta, steps)
    (out / "summary.md").write_text(text)
    return text


def render(meta: Mapping[str, Any], steps: Mapping[str, StepResult]) -> str:
    lines = [f"# gpu_check on {meta.get('host')}{' (FAKE GPU)' if meta.get('fake') else ''}", "",
             f"- command: `{meta.get('command')}`",
             f"- started {meta.get('started_at')}, {meta.get('elapsed_s', 0):.0f} s of a "
             f"{meta.get('total_budget_s', 0):.0f} s budget; logs in {LOGS_ARCHIVE}", "",
             "| step | status | s | what |", "| --- | --- | ---: | --- |"]  # fmt: skip
    for name in STEP_ORDER:
        if name in steps:
            s = steps[name]
            lines.append(f"| {name} | {s.status.upper()} | {s.seconds:.0f} | "
                         f"{_cell(s.reason)} |")  # fmt: skip
    lines += _details(steps)
    return "\n".join(lines) + "\n"


def _details(steps: Mapping[str, StepResult]) -> list[str]:
    lines: list[str] = []
    env = steps.get("env")
    if env is not None and env.figures.get("gpus") is not None:
        f = env.figures
        lines += ["", "## Environment", "",
                  f"- GPUs ({f.get('gpu_source')}): " + (", ".join(
                      f"{g['name']} {g['memory_mib']} MiB cc {g['compute_capability']} MIG "
                      f"{'on' if g['mig_enabled'] else 'off'}" for g in f["gpus"]) or "none"),
                  f"- driver {f.get('driver')}; Python {f.get('python')} ({f.get('machine')})",
                  f"- torch: {f.get('torch')}; onnxruntime: {f.get('onnxruntime')}",
                  f"- CUDA client without MPS: {f.get('cuda_plain')}",
                  f"- MPS: {f.get('mps')}",
                  f"- sharing chosen: {f.get('sharing')}",
                  f"- modules missing: {f.get('modules_missing') or 'none'}",
                  f"- versions: {f.get('versions')}"]  # fmt: skip
    for name in ("profile", "fallback_profile"):
        step = steps.get(name)
        if step is not None and step.figures.get("provenance"):
            lines += ["", f"## {name}", "", f"- {step.figures['provenance']}",
                      f"- `{step.figures.get('command')}`",
                      f"- {step.figures['points']} points, {step.figures['pairs']} pairs; "
                      f"files: {', '.join(step.figures.get('files', []))}"]  # fmt: skip
    for name in ("e2e", "fallback_e2e"):
        step = steps.get(name)
        load = step.figures.get("load") if step is not None else None
        if step is None or not load:
            continue
        lines += ["", f"## {name}", "",
                  f"- devices: {step.figures.get('devices')}",
                  f"- placement: {step.figures.get('placement')}",
                  f"- peak {step.figures.get('peak_rps')} req/s per model; sent "
                  f"{step.figures.get('rate_rps')} req/s per model; sender lateness p99 "
                  f"{load.get('sender_lateness_p99_ms')} ms", "",
                  "| model | SLO ms | sent | ok | late | errors | attainment | p50 ms | p99 ms |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
        for model, s in (*load["models"].items(), ("TOTAL", load["total"])):
            lines.append(f"| {model} | {s['slo_ms'] or ''} | {s['sent']} | {s['ok']} | "
                         f"{s['late']} | {s['errors'] or ''} | {s['attainment']:.4f} | "
                         f"{s['p50_ms']} | {s['p99_ms']} |")  # fmt: skip
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def pack_logs(out: Path, logs: Path) -> Path | None:
    """logs/ -> logs.tar.gz (and logs/ removed); None when there is nothing to pack."""
    if not logs.is_dir() or not any(logs.iterdir()):
        return None
    archive = out / LOGS_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(logs, arcname=logs.name)
    shutil.rmtree(logs)
    return archive
