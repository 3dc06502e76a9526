"""An agent's repository model files: found in its own view of the repository when the sha256
matches, else in its cache, else fetched from the router (a real HTTP server on loopback here),
verified and cached; a wrong file is never kept; ONNX Runtime checks each file once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from onnx import TensorProto

from agent.local_model import LocalModel
from agent.model_check import check_models
from agent.model_files import ModelFiles
from common.errors import BadModel, NotLoadable, UnknownModel
from common.repository.layout import RepositoryFolder
from common.settings import AgentSettings
from common.store import Store
from tests.support.onnx_files import onnx_bytes

pytestmark = pytest.mark.timeout(60)
FLOAT = TensorProto.FLOAT


class FileServer:
    """Serves bytes by sha256 as the router does, counting the fetches."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fetches = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        data = self.files.get(request.match_info["sha"])
        return web.Response(body=data) if data is not None else web.Response(status=404)


async def serve_files(served: FileServer, port: int = 0) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/v1/model-files/{sha}", served.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served.url = f"http://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    served = FileServer()
    runner = await serve_files(served)
    try:
        yield served
    finally:
        await runner.cleanup()


async def publish(store: Store, root: Path, server: FileServer, name: str = "m") -> str:
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes([("x", FLOAT, ["b", 4])], [("y", FLOAT, ["b", 4])]))
    (published,) = RepositoryFolder(root, 10**6).scan(name).files
    server.files[published.sha256] = path.read_bytes()
    url = f"{server.url}/v1/model-files/{published.sha256}"
    await store.put_model_files({name: {**published.to_json(), "url": url}})
    return published.sha256


async def test_an_agent_without_the_folder_fetches_verifies_and_caches_once(
    store: Store, server: FileServer, tmp_path: Path
) -> None:
    sha = await publish(store, tmp_path / "repo", server)
    files = ModelFiles(AgentSettings(model_dir=tmp_path / "cache" / "models"), store)
    local = await files.resolve_one("m")
    assert local.path == tmp_path / "cache" / "models" / "repository" / f"{sha}.onnx"
    assert hashlib.sha256(local.path.read_bytes()).hexdigest() == sha
    assert (local.repository, local.file, local.fingerprint) == (True, "m/1/model.onnx",
                                                                 f"sha256:{sha}")  # fmt: skip
    assert local.spec.inputs[0].shape == (-1, 4)
    again = ModelFiles(AgentSettings(model_dir=tmp_path / "cache" / "models"), store)
    assert (await again.resolve_one("m")).path == local.path
    assert server.fetches == 1  # the second agent process found it cached


async def test_a_router_not_listening_yet_is_waited_for(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A router publishes its records before it listens; an agent starting beside it fetches
    once it does, not failing at the first refused connection."""
    caplog.set_level(logging.INFO, logger="agent.model_files")
    closed = socket.socket()  # holds a port nothing listens on: connections are refused
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    served = FileServer()
    served.url = f"http://127.0.0.1:{port}"
    sha = await publish(store, tmp_path / "repo", served)
    files = ModelFiles(AgentSettings(model_dir=tmp_path / "cache"), store)
    fetching = asyncio.create_task(files.resolve_one("m"))
    try:
        async with asyncio.timeout(10):
            while "refused the connection" not in caplog.text:
                assert not fetching.done(), fetching.result()
                await asyncio.sleep(0.01)  # polls the log for the refused try; noqa: sleep-ok
    finally:
        closed.close()
    runner = await serve_files(served, port)
    try:
        local = await fetching
    finally:
        await runner.cleanup()
    assert local.path.name == f"{sha}.onnx" and served.fetches == 1


async def test_an_agent_that_sees_the_folder_uses_the_file_in_place(
    store: Store, server: FileServer, tmp_path: Path
) -> None:
    await publish(store, tmp_path / "repo", server)
    settings = AgentSettings(model_dir=tmp_path / "cache", model_repository=tmp_path / "repo")
    local = await ModelFiles(settings, store).resolve_one("m")
    assert local.path == tmp_path / "repo" / "m" / "1" / "model.onnx"
    assert server.fetches == 0


async def test_a_different_file_under_the_same_path_is_fetched_instead(
    store: Store, server: FileServer, tmp_path: Path
) -> None:
    sha = await publish(store, tmp_path / "repo", server)
    mine = tmp_path / "mine" / "m" / "1" / "model.onnx"  # same path, other bytes of that size
    mine.parent.mkdir(parents=True)
    mine.write_bytes(bytes(len(server.files[sha])))
    settings = AgentSettings(model_dir=tmp_path / "cache", model_repository=tmp_path / "mine")
    local = await ModelFiles(settings, store).resolve_one("m")
    assert local.path.name == f"{sha}.onnx" and server.fetches == 1


async def test_bytes_that_do_not_match_the_published_sha256_are_not_kept(
    store: Store, server: FileServer, tmp_path: Path
) -> None:
    sha = await publish(store, tmp_path / "repo", server)
    server.files[sha] = server.files[sha][:-1] + b"\x00"  # the router's file changed since
    files = ModelFiles(AgentSettings(model_dir=tmp_path / "cache"), store)
    with pytest.raises(NotLoadable, match="published as .* load the model again"):
        await files.resolve_one("m")
    assert list((tmp_path / "cache" / "repository").iterdir()) == []


async def test_a_name_no_router_published_is_unknown(store: Store, tmp_path: Path) -> None:
    files = ModelFiles(AgentSettings(model_dir=tmp_path), store)
    with pytest.raises(UnknownModel, match="no model 'mystery': not in the catalog"):
        await files.resolve_one("mystery")
    assert (await files.resolve_one("noop")).repository is False  # the zoo's, unpublished


async def test_onnx_runtime_checks_each_file_once_and_names_a_bad_one(
    store: Store, server: FileServer, tmp_path: Path
) -> None:
    await publish(store, tmp_path / "repo", server)
    files = ModelFiles(AgentSettings(model_dir=tmp_path / "cache"), store)
    good = await files.resolve_one("m")
    await check_models([good], files.checked)
    assert files.checked == {good.fingerprint}
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.path.read_bytes()[:-20])
    bad = LocalModel(good.spec, broken, "sha256:other", repository=True, file="m/2/model.onnx")
    with pytest.raises(BadModel, match="m/2/model.onnx: ONNX Runtime cannot run it"):
        await check_models([good, bad], files.checked)
