"""Step `pytest`: `python -m pytest tests/gpu -v` with its output saved, its outcome counted
per test line (so a run stopped at its deadline still counts what finished), and the MPS
slowdown tests/gpu prints (resnet50 batch 32 at 20 % against 100 %)."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .runner import FAILED, OK, SKIPPED, Context, StepResult, run_logged, stop_left_daemon

OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(" + "|".join(OUTCOMES) + r")\b")
_SKIP_REASON = re.compile(r"^SKIPPED \[\d+\] [^:]+(?::\d+)?: (.*)$")
_RATIO = re.compile(r"MPS ratio resnet50 b32 20%/100% = ([0-9.]+)(.*)$")
_FAILURE = re.compile(r"^(?:FAILED|ERROR) (tests/\S+)(?: - (.*))?$")


@dataclass(frozen=True)
class PytestOutcome:
    counts: Mapping[str, int]  # outcome (lower case) -> tests
    failures: tuple[str, ...]  # "test id - message" from the short summary
    skip_reasons: tuple[str, ...]
    mps_ratio: float | None  # resnet50 b32: latency at 20 % / at 100 %
    mps_ratio_line: str | None


def parse_pytest(text: str) -> PytestOutcome:
    """Counts from the -v test lines; failures and skip reasons from the -rA summary."""
    counts: Counter[str] = Counter()
    failures, skips = [], []
    ratio, ratio_line = None, None
    for line in text.splitlines():
        if (test := _TEST_LINE.match(line)) is not None:
            counts[test.group(2).lower()] += 1
        elif (failure := _FAILURE.match(line)) is not None:
            failures.append(" - ".join(p for p in failure.groups() if p))
        elif (skip := _SKIP_REASON.match(line)) is not None:
            skips.append(skip.group(1))
        if (found := _RATIO.search(line)) is not None:
            ratio, ratio_line = float(found.group(1)), found.group(0)
    return PytestOutcome(dict(counts), tuple(failures), tuple(dict.fromkeys(skips)), ratio,
                         ratio_line)  # fmt: skip


def judge(outcome: PytestOutcome, returncode: int | None) -> tuple[str, str]:
    """(status, reason): failed on any failure or error or a stopped run; skipped when nothing
    passed (a GPU host where every GPU test skips has not been checked); ok otherwise."""
    counts = outcome.counts
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test ran"
    if returncode is None:
        return FAILED, f"stopped at its deadline after {text}"
    if counts.get("failed") or counts.get("error") or returncode not in (0, 5):
        shown = "; ".join(outcome.failures[:3]) or f"pytest exited {returncode}"
        return FAILED, f"{text}: {shown}"
    if not counts.get("passed"):
        return SKIPPED, f"{text}: {'; '.join(outcome.skip_reasons[:2]) or 'nothing passed'}"
    return OK, text


def run_pytest(ctx: Context, budget_s: float, env: Mapping[str, str]) -> StepResult:
    started = time.monotonic()
    log = ctx.logs / "pytest.log"
    # -rA: a summary line per test (failures' messages, skip reasons) and passes' output,
    # where the MPS ratio line is.
    # --basetemp in our scratch folder: the tests' MPS pipe directories (tmp_path) are where a
    # daemon left by a test stopped at the deadline is found.
    args = [sys.executable, "-m", "pytest", "tests/gpu", "-v", "-rA", "-p", "no:cacheprovider",
            "--basetemp", str(ctx.scratch / "pytest" / "tmp")]  # fmt: skip
    done = run_logged(args, env, log, budget_s)
    left = stop_left_daemon(ctx, "pytest")
    outcome = parse_pytest(log.read_text(errors="replace") if log.exists() else "")
    status, reason = judge(outcome, done.returncode)
    ratio = ("MPS 20%/100% (resnet50 b32): not measured" if outcome.mps_ratio is None
             else f"MPS 20%/100% (resnet50 b32): {outcome.mps_ratio:.2f}")  # fmt: skip
    figures = {"counts": dict(outcome.counts), "failures": list(outcome.failures),
               "skip_reasons": list(outcome.skip_reasons), "mps_ratio": outcome.mps_ratio,
               "mps_ratio_line": outcome.mps_ratio_line, "returncode": done.returncode,
               "left_daemon": left}  # fmt: skip
    return StepResult("pytest", status, f"{reason}; {ratio}", time.monotonic() - started,
                      figures, [ctx.rel(log)])  # fmt: skip
