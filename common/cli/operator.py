"""`gpulet status` and `gpulet plan|peak --url`: a running cluster seen through its router's API.

Read-only GETs (stdlib HTTP: a CLI needs no connection pool); a router that cannot be reached
or answers an error exits 2 with a message that says which URL and why. `--json` prints the
data for scripts, else rich tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console

from common.cli.status_view import (
    live_plan_view,
    metric_samples,
    peak_view,
    status_document,
    status_tables,
)

TIMEOUT_S = 30.0  # a peak search on a large cluster takes seconds; the rest answers at once
DEFAULT_URL = "http://127.0.0.1:8000"


class RouterError(Exception):
    """The router did not answer, or answered an error (the message says which)."""


def add_status_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="a running cluster: agents, devices, gpu-lets, models, rates, SLO "
        "attainment, placement and re-plans",
    )  # fmt: skip
    status.add_argument("--url", default=DEFAULT_URL, metavar="URL",
                        help=f"the router's base URL (default {DEFAULT_URL})")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON")


def fetch(url: str, path: str, *, text: bool = False) -> Any:
    target = url.rstrip("/") + path
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise RouterError(f"GET {target}: {exc.code} {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RouterError(f"cannot reach the router at {url} ({reason}); is it running? "
                                "pass --url") from exc  # fmt: skip
    if text:
        return raw.decode()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RouterError(f"GET {target}: not JSON: {raw[:200]!r}") from exc


def run_status(args: argparse.Namespace) -> int:
    try:
        doc = status_document(
            fetch(args.url, "/v1/cluster"), fetch(args.url, "/v1/models"),
            metric_samples(fetch(args.url, "/metrics", text=True)),
        )  # fmt: skip
    except RouterError as exc:
        print(f"gpulet status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        Console().print(status_tables(doc))
    return 0


def run_live(args: argparse.Namespace) -> int:
    """`gpulet plan --url` (the running plan, predicted) or `gpulet peak --url` (its peak)."""
    path = "/v1/plan?peak=true" if args.command == "peak" else "/v1/plan"
    try:
        body = fetch(args.url, path)
    except RouterError as exc:
        print(f"gpulet {args.command}: {exc}", file=sys.stderr)
        return 2
    data = body["peak"] if args.command == "peak" else body
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        Console().print(peak_view(data) if args.command == "peak" else live_plan_view(body))
    if args.command == "peak":
        return 0 if data["peak_rps"] is not None else 1
    return 0
