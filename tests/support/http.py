"""A minimal blocking HTTP client for tests (stdlib only): status, JSON body, headers."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> Answer:
    req = urllib.request.Request(
        url,
        data=body,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = raw.decode(errors="replace")
    # Header names are case-insensitive; keep them lower-case so lookups need not guess.
    return Answer(status, parsed, {k.lower(): v for k, v in got.items()})
