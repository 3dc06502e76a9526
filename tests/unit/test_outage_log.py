"""An outage is one WARNING when it starts and one INFO when it ends, whatever its length."""

from __future__ import annotations

import logging

import pytest

from common.outage import OutageLog


def test_one_warning_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = OutageLog(logging.getLogger("test.outage"), "heartbeat (Redis)", lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="test.outage"):
        assert log.ok() is None
        assert log.failed("refused") is True
        for _ in range(20):
            now[0] += 1.0
            assert log.failed("refused") is False
        assert log.ok() == 20.0
        assert log.failed("refused") is True  # a new outage
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert [lvl for lvl, _ in levels if lvl != "DEBUG"] == ["WARNING", "INFO", "WARNING"]
