"""`gpulet router`: build the app from settings and serve it with uvicorn until signalled."""

from __future__ import annotations

import logging

import uvicorn
import uvloop

from common.serving_process import tune_serving_process
from common.settings import RouterSettings
from common.store import Store
from router.http.app import create_app

logger = logging.getLogger(__name__)


class MissingRedis(RuntimeError):
    pass


def run(settings: RouterSettings) -> None:
    if not settings.redis_url:
        raise MissingRedis(
            "the router needs GPULET_REDIS_URL (or REDIS_URL); `gpulet up` finds or starts one"
        )
    # uvloop, started here: uvicorn's own `loop` option is ignored once a loop is running, and
    # this loop carries every request's bytes (machine-notes section 6).
    uvloop.run(serve(settings))


async def serve(settings: RouterSettings) -> None:
    assert settings.redis_url is not None
    store = Store.from_url(settings.redis_url, settings.redis_prefix)
    await store.ping()
    app = create_app(settings, store=store)
    tune_serving_process()
    config = uvicorn.Config(
        app,
        host=settings.router_host,
        port=settings.router_port,
        loop="none",  # the running uvloop loop of `run`
        http="httptools",
        access_log=False,
        # The router reads no client address or scheme: X-Forwarded-* parsing would be work
        # on every request for nothing.
        proxy_headers=False,
        log_config=None,  # keep the logging our entry point configured
        timeout_graceful_shutdown=5,
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await store.close()
