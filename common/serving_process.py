"""Process settings for a service whose event loop carries requests (the router, the agent):
keep garbage collection and helper threads from holding the loop up."""

from __future__ import annotations

import gc
import sys

# Objects a request allocates before gen-0 collects: CPython's default (700) collects many times
# per request burst, and every 10th gen-1 can end in a full collection.
GC_GEN0_THRESHOLD = 20_000

# How long a thread may hold the GIL while another waits for it. A plan searched in a helper
# thread (hundreds of ms of pure Python) made each wake of the event loop wait out CPython's
# 5 ms default: a request, woken several times on its way, lost 10-20 ms (benchmarks/
# planning_lag.py). At 0.5 ms the loop waits ~0.7 ms a wake; the planner, ~4% longer.
SWITCH_INTERVAL_S = 0.0005


def calm_garbage_collector() -> None:
    """Keep full collections off the request path. Under overload ~1000 requests wait at once,
    each holding its ASGI stack's coroutines, and CPython's full collections over the router's
    ~500k objects took 100-150 ms every 4 s: it answered nothing meanwhile (overload benchmark,
    p99 of refusals); the agent's took 10-25 ms, longer than a small model's whole deadline.
    The objects of start-up (modules, the app, profiles) never die: frozen, no collection
    scans them again; and gen-0 runs less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def favour_event_loop() -> None:
    """The event loop gets the GIL back within SWITCH_INTERVAL_S of asking for it."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def tune_serving_process() -> None:
    calm_garbage_collector()
    favour_event_loop()
