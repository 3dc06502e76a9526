"""Plan time of gpulet+int as shipped (2 gpu-lets per device, more only where 2 find no plan) at
64 and 256 a100-class devices x 12 models, when a plan exists and when none does.

Run: `python benchmarks/plan_time.py` (prints median and max of 3 plans per case).
"""

from __future__ import annotations

import statistics
import time

from common.interference_models import fitted_for
from common.profiles import find_profile
from router.scheduling.peak import best_device_throughput
from router.scheduling.perf import PerfModel
from router.scheduling.schedulers import plan
from router.scheduling.types import Device, ModelDemand, PlanConfig

PROFILE = "a100-class"
SLO_FACTOR = 5.0  # SLO = 5 x batch-1 latency on the whole GPU x the 1.1 margin
LOADS = (0.5, 0.8, 1.2)  # demand as a share of the 2-gpu-let fluid bound
REPEATS = 3


def main() -> None:
    profile = find_profile(PROFILE)
    interference = fitted_for(PROFILE)
    models = [*profile.models(), "resnet50"]  # 12 served models: one model twice
    slo = {m: SLO_FACTOR * 1.1 * profile.latency_ms(m, 1, 100) for m in models}
    perf = PerfModel(profile, PlanConfig())
    per_device = [best_device_throughput(perf, m, slo[m], profile.sizes, 2) for m in models]
    print(f"{'devices':>7} {'load':>5} {'feasible':>8} {'median ms':>10} {'max ms':>8}")
    for count in (64, 256):
        devices = [Device(f"gpu{i}", "offline", profile) for i in range(count)]
        for load in LOADS:
            rate = load * count / sum(1 / x for x in per_device)
            demands = [ModelDemand(f"{m}#{i}", m, rate, slo[m]) for i, m in enumerate(models)]
            times, result = [], None
            for _ in range(REPEATS):
                started = time.perf_counter()
                result = plan("gpulet+int", demands, devices, PlanConfig(), interference)
                times.append((time.perf_counter() - started) * 1000)
            assert result is not None
            print(f"{count:>7} {load:>5} {str(result.feasible):>8} "
                  f"{statistics.median(times):>10.1f} {max(times):>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
