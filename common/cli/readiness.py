"""`gpulet up`'s readiness judgement (pure): which models failed to come up, and why.

A model is ready when `/readyz` stops naming it. It has failed when every gpu-let serving it
reports an error and has already been restarted `LOAD_FAILURES` times (a worker that cannot load
its model fails the same way each time), or is `failed` outright; and, after `/readyz`, when its
warm-up request was not answered 200.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A gpu-let whose worker failed to load this many times in a row will not come up by waiting.
LOAD_FAILURES = 2
# Warm-up answers that mean "not now" (load, a gpu-let still switching): asked again.
RETRYABLE_STATUSES = (503, 504)


def load_failures(cluster: Mapping[str, Any], waiting: Iterable[str]) -> dict[str, str]:
    """Models among `waiting` whose every gpu-let keeps failing, with the agents' reasons."""
    reasons: dict[str, list[str]] = {}
    healthy: set[str] = set()
    for agent in cluster.get("agents", []):
        for gpulet in agent.get("gpulets", []):
            error = gpulet.get("error")
            stuck = gpulet.get("state") == "failed" or (
                error and int(gpulet.get("restarts", 0)) >= LOAD_FAILURES
            )
            for model in gpulet.get("models", []):
                if stuck and error:
                    reasons.setdefault(model, []).append(f"{gpulet.get('gpulet_id')}: {error}")
                else:
                    healthy.add(model)
    return {m: "; ".join(reasons[m]) for m in waiting if m in reasons and m not in healthy}


def warm_up_problem(status: int, answer: Mapping[str, Any]) -> str:
    """One line saying why a warm-up was not answered 200."""
    error = answer.get("error")
    if isinstance(error, Mapping):
        return f"{status} {error.get('code', '')}: {error.get('message', '')}".strip()
    return f"{status}: {answer}"
