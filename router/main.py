"""`gpulet router`: build the app from settings and serve it with uvicorn until signalled."""

from __future__ import annotations

import gc
import logging

import uvicorn
import uvloop

from common.settings import RouterSettings
from common.store import Store
from router.http.app import create_app

logger = logging.getLogger(__name__)


class MissingRedis(RuntimeError):
    pass


# Objects a request allocates before gen-0 collects: CPython's default (700) collects many times
# per request burst, and every 10th gen-1 can end in a full collection.
GC_GEN0_THRESHOLD = 20_000


def calm_garbage_collector() -> None:
    """Keep full collections off the request path. Under overload ~1000 requests wait at once,
    each holding its ASGI stack's coroutines, and CPython's full collections over the ~500k
    objects took 100-150 ms every 4 s: the router answered nothing meanwhile (overload
    benchmark, p99 of refusals). The objects of start-up (modules, the app, profiles) never
    die: frozen, no collection scans them again; and gen-0 runs less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


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
    calm_garbage_collector()
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
