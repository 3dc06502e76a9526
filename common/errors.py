"""The one error tree: every way a request can fail, with a stable code and an HTTP status.

    GpuletError                      500 internal
    ├── BadRequest                   400 bad_request       malformed body, missing/extra
    │                                                      input, wrong shape/dtype, not numbers
    ├── Unauthorized                 401 unauthorized      an admin endpoint without the
    │                                                      GPULET_ADMIN_TOKEN bearer token
    ├── BadModel                     400 bad_model         model load: the repository's files
    │                                                      cannot be served (names file, field)
    ├── UnknownModel                 404 unknown_model     lists the known models
    ├── NotLoadable                  409 not_loadable      model load: the cluster cannot
    │                                                      serve it (e.g. no profile rows)
    ├── PayloadTooLarge              413 payload_too_large gives the limit
    ├── SloUnattainable              422 slo_unattainable  gives the best achievable latency
    ├── Unavailable                  503 unavailable       no gpulet or agent gone (Retry-After)
    │   └── Overloaded               503 overloaded        a queue is full (Retry-After)
    ├── BackendFailed                502 backend_failed    the worker died or failed the batch
    └── DeadlinePassed               504 deadline_exceeded the request's deadline passed

Foreign exceptions (aiohttp, redis, onnxruntime, a dead worker's socket) are translated into these
once, where they are caught; the router maps them to HTTP in one handler.
"""

from __future__ import annotations

from typing import Any


class GpuletError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after_s: float | None = None

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries: Retry-After when there is one."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class BadRequest(GpuletError):
    code = "bad_request"
    status = 400


class Unauthorized(GpuletError):
    code = "unauthorized"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}  # RFC 6750: the scheme the client must use


class BadModel(GpuletError):
    code = "bad_model"
    status = 400


class UnknownModel(GpuletError):
    code = "unknown_model"
    status = 404


class NotLoadable(GpuletError):
    code = "not_loadable"
    status = 409


class PayloadTooLarge(GpuletError):
    code = "payload_too_large"
    status = 413


class SloUnattainable(GpuletError):
    code = "slo_unattainable"
    status = 422


class Unavailable(GpuletError):
    code = "unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    code = "overloaded"


class BackendFailed(GpuletError):
    code = "backend_failed"
    status = 502


class DeadlinePassed(GpuletError):
    code = "deadline_exceeded"
    status = 504


_BY_CODE: dict[str, type[GpuletError]] = {
    cls.code: cls
    for cls in (
        GpuletError,
        BadRequest,
        Unauthorized,
        BadModel,
        UnknownModel,
        NotLoadable,
        PayloadTooLarge,
        SloUnattainable,
        Unavailable,
        Overloaded,
        BackendFailed,
        DeadlinePassed,
    )
}


def from_code(code: str, message: str, **details: Any) -> GpuletError:
    """Rebuild an error that crossed a process boundary as (code, message)."""
    cls = _BY_CODE.get(code, GpuletError)
    return cls(message, **details)
