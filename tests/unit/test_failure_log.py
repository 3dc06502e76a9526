"""router.http.failure_log: a line per failed request, until a flood: then a count a second."""

from __future__ import annotations

import logging

import pytest

from common.errors import BadRequest, DeadlinePassed, Overloaded
from router.http.failure_log import LINES_PER_S, FailureLog

pytestmark = pytest.mark.timeout(10)


def test_a_flood_of_failures_is_counted_not_logged_line_by_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = FailureLog(logging.getLogger("test.failures"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.failures"):
        for i in range(1000):
            log.failed(f"r{i}", DeadlinePassed("too late"))
        log.failed("bad", BadRequest("the client's own mistake"))  # 4xx: not logged
        log.failed("o1", Overloaded("busy"))  # another code has its own budget
        now[0] = 1.5
        log.failed("later", DeadlinePassed("too late"))
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("request_id=r")]) == LINES_PER_S
    assert f"{1000 - LINES_PER_S} more deadline_exceeded answers" in " ".join(lines)
    assert any(m.startswith("request_id=o1 overloaded") for m in lines)
    assert any(m.startswith("request_id=later") for m in lines)
    assert not any("bad" in m for m in lines)
