"""`gpulet up`'s supervision policy (pure, on an injected clock): restart after a back-off that
doubles while a child keeps dying young, resets once it ran STABLE_S, one line per restart."""

from __future__ import annotations

import logging

import pytest

from common.cli.supervise import RESTART_FIRST_S, RESTART_MAX_S, STABLE_S, Supervisor, backoff_s


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class Flaky:
    """A child (the Restartable interface) that is dead until restarted, or fails to start."""

    name = "router"

    def __init__(self, start_failures: int = 0) -> None:
        self.running = True
        self.starts = 0
        self.start_failures = start_failures

    def alive(self) -> bool:
        return self.running

    def exit_code(self) -> int | None:
        return None if self.running else -9

    def pid(self) -> int | None:
        return 1000 + self.starts

    def restart(self) -> None:
        if self.start_failures:
            self.start_failures -= 1
            raise OSError("port in use")
        self.starts += 1
        self.running = True


def test_backoff_doubles_to_its_cap() -> None:
    assert backoff_s(1) == RESTART_FIRST_S
    assert backoff_s(2) == 2 * RESTART_FIRST_S
    assert backoff_s(50) == RESTART_MAX_S


def test_a_dead_child_is_restarted_after_the_backoff_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, child = Clock(), Flaky()
    supervisor = Supervisor([child], clock)
    clock.now_s = 3.0
    child.running = False
    with caplog.at_level(logging.INFO, logger="common.cli.supervise"):
        supervisor.check()
        assert child.starts == 0  # the back-off first
        clock.now_s += RESTART_FIRST_S
        supervisor.check()
    assert child.starts == 1 and supervisor.restarts == {"router": 1}
    [line] = [r.getMessage() for r in caplog.records]
    assert "router exited (code -9) after 3.0s; restarted pid=1001 (restart #1" in line


def test_backoff_grows_while_it_dies_young_and_resets_once_stable() -> None:
    clock, child = Clock(), Flaky()
    supervisor = Supervisor([child], clock)
    waits = []
    for _ in range(3):
        child.running = False
        supervisor.check()
        died_s = clock.now_s
        while child.starts == len(waits):
            clock.now_s += 0.1
            supervisor.check()
        waits.append(round(clock.now_s - died_s, 1))
    assert waits == [RESTART_FIRST_S, 2 * RESTART_FIRST_S, 4 * RESTART_FIRST_S]
    clock.now_s += STABLE_S
    supervisor.check()  # it ran long enough: healthy again
    child.running = False
    supervisor.check()
    clock.now_s += RESTART_FIRST_S
    supervisor.check()
    assert child.starts == 4


def test_a_failed_restart_is_retried_later() -> None:
    clock, child = Clock(), Flaky(start_failures=1)
    supervisor = Supervisor([child], clock)
    child.running = False
    supervisor.check()
    clock.now_s += RESTART_FIRST_S
    supervisor.check()  # fails: port in use
    assert child.starts == 0
    clock.now_s += backoff_s(2)
    supervisor.check()
    assert child.starts == 1
