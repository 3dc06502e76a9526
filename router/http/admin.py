"""Admin endpoints behind a bearer token: with GPULET_ADMIN_TOKEN set, the routes that change the
server's state (model load and unload) need `Authorization: Bearer <token>`, else 401
`unauthorized`; inference, health, metrics and the read-only views stay open.

The token is compared in constant time. Without a token nothing is guarded (a laptop or a
cluster whose network is the boundary), and the OpenAPI schema then declares no security.
"""

# No `from __future__ import annotations`: FastAPI evaluates the dependency's annotations, and
# `Depends(bearer)` names a local of the factory that a postponed string could not reach.
import hmac
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.errors import Unauthorized

SCHEME = "adminToken"  # the security scheme's name in the OpenAPI schema


def admin_dependencies(token: str | None) -> list[Any]:
    """FastAPI `dependencies=` for a guarded route: none when no token is configured."""
    if not token:
        return []
    expected = token.encode()
    bearer = HTTPBearer(
        auto_error=False,
        scheme_name=SCHEME,
        description="GPULET_ADMIN_TOKEN, as `Authorization: Bearer <token>`",
    )

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None:
            raise Unauthorized("this endpoint changes the server's state: send the admin token "
                               "as `Authorization: Bearer <GPULET_ADMIN_TOKEN>`")  # fmt: skip
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise Unauthorized("the bearer token is not the admin token (GPULET_ADMIN_TOKEN)")

    return [Depends(require_token)]
