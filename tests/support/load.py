"""Closed-loop load for failure tests: threads sending requests round-robin over routers, each
request retried on another router when its connection is refused or dropped (a router being
killed), every answer recorded with its status, error code and latency."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support import http as client

RETRY_PAUSE_S = 0.05
GIVE_UP_S = 30.0  # a request not answered by any router in this long counts as lost


@dataclass
class Answered:
    status: int
    code: str | None
    seconds: float  # from the first try to the answer
    retries: int  # connections refused or dropped before it


@dataclass
class Load:
    urls: Callable[[], Sequence[str]]  # the routers to send to, read before each try
    path: str
    body: dict[str, Any]
    clients: int = 4
    answers: list[Answered] = field(default_factory=list)
    lost: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # connection errors, by kind
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=GIVE_UP_S + 10)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for a in self.answers if status is None or a.status == status)

    def _run(self) -> None:
        data = orjson.dumps(self.body)
        while not self._stop.is_set():
            answer = self._one(data)
            with self._lock:
                if answer is None:
                    self.lost += 1
                else:
                    self.answers.append(answer)

    def _one(self, data: bytes) -> Answered | None:
        sent = time.monotonic()
        retries = 0
        while time.monotonic() - sent < GIVE_UP_S:
            urls = list(self.urls())
            url = urls[next(self._turn) % len(urls)]
            try:
                got = client.request("POST", url + self.path, data, timeout_s=GIVE_UP_S)
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
                retries += 1
                with self._lock:
                    self.dropped[type(getattr(exc, "reason", exc)).__name__] += 1
                time.sleep(RETRY_PAUSE_S)  # a router is restarting; noqa: sleep-ok
                continue
            return Answered(got.status, got.code, time.monotonic() - sent, retries)
        return None
