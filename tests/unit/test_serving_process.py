"""The router's and agent's process settings: frozen start-up objects, a rarer gen-0, and a
short GIL switch interval, so a helper thread's plan does not hold the event loop up."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from common.serving_process import GC_GEN0_THRESHOLD, SWITCH_INTERVAL_S

pytestmark = pytest.mark.timeout(60)

PROBE = """
import gc, sys, orjson
before = {"interval": sys.getswitchinterval(), "gen0": gc.get_threshold()[0],
          "frozen": gc.get_freeze_count()}
from common.serving_process import tune_serving_process
tune_serving_process()
after = {"interval": sys.getswitchinterval(), "gen0": gc.get_threshold()[0],
         "frozen": gc.get_freeze_count()}
print(orjson.dumps({"before": before, "after": after}).decode())
"""


def test_tuning_freezes_start_up_and_shortens_the_switch_interval() -> None:
    # In a process of its own: the settings are process-wide.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, check=True,
                         timeout=50).stdout  # fmt: skip
    seen = orjson.loads(out)
    assert seen["before"]["interval"] == pytest.approx(0.005)
    assert seen["before"]["frozen"] == 0 and seen["before"]["gen0"] == 700
    assert seen["after"] == {"interval": pytest.approx(SWITCH_INTERVAL_S),
                             "gen0": GC_GEN0_THRESHOLD, "frozen": seen["after"]["frozen"]}
    assert seen["after"]["frozen"] > 1000  # the modules imported so far
