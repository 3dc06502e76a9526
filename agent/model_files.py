"""Where this agent finds each model's file: a zoo model in the build cache; a repository model
(published by the router in Redis: signature, sha256, size, path in the repository, fetch URL)
in the agent's own view of the repository, else in its cache, else fetched from the router.

    1. GPULET_MODEL_REPOSITORY set here and `<it>/<path>` has the published size and sha256: use
       it in place (same host, or a shared mount);
    2. GPULET_MODEL_DIR/repository/<sha256>.onnx with that size and sha256: use it;
    3. else GET the router's URL for it, hash while writing a temp file beside the cache, and
       rename it into place only when size and sha256 match (never a half or wrong file).
A file is hashed once per (path, size, mtime) in this process. A repository model is also checked
once per sha256 by ONNX Runtime (agent/model_check.py) before it is profiled or served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from agent.local_model import LocalModel, zoo_model
from common.errors import BadModel, GpuletError, NotLoadable, Unavailable, UnknownModel
from common.models import CATALOG
from common.modelzoo.cache import fingerprint
from common.repository.layout import ModelFile
from common.settings import AgentSettings
from common.store import Store

logger = logging.getLogger(__name__)

CACHE_FOLDER = "repository"
FETCH_CHUNK_BYTES = 1 << 20
FETCH_READ_TIMEOUT_S = 60.0  # a stalled transfer fails; a large one may take as long as it needs
RECORD_POLL_S = 0.2
FILE_MODE = 0o644
# A router publishes its models' records before it listens: an agent starting beside it may
# find the record first. Connections refused are retried this long before the fetch fails.
FETCH_CONNECT_WAIT_S = 30.0
FETCH_RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class RouterNotListening(Unavailable):
    """The fetch URL's host refused the connection (nothing sent or received yet)."""


class ModelFiles:
    def __init__(self, settings: AgentSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.cache_dir = settings.model_dir / CACHE_FOLDER
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.checked: set[str] = set()  # sha256 of repository files ONNX Runtime has run here

    async def resolve(self, names: Iterable[str], *, wait_s: float = 0.0) -> dict[str, LocalModel]:
        """Each model's spec and local file (fetched when needed). A name neither published by
        the router nor in the catalog is waited for up to `wait_s` (a router still starting),
        then answered 404."""
        return {name: await self.resolve_one(name, wait_s=wait_s) for name in dict.fromkeys(names)}

    async def resolve_one(self, name: str, *, wait_s: float = 0.0) -> LocalModel:
        record = await self._record(name, wait_s=wait_s)
        if record is None:
            return zoo_model(self.settings.model_dir, name)
        published = ModelFile.from_json(record)
        path = await self._local_file(published, str(record.get("url", "")))
        return LocalModel(published.spec, path, f"sha256:{published.sha256}", repository=True,
                          file=published.relpath)  # fmt: skip

    async def fingerprint(self, name: str) -> str | None:
        record = await self.store.model_file(name)
        if record is not None:
            return f"sha256:{record['sha256']}"
        return fingerprint(name) if name in CATALOG else None

    async def _record(self, name: str, *, wait_s: float) -> dict[str, Any] | None:
        """The router's record of `name`; None for a catalog model it did not publish."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            record = await self.store.model_file(name)
            if record is not None or name in CATALOG:
                return record
            if asyncio.get_running_loop().time() >= deadline:
                raise UnknownModel(f"no model {name!r}: not in the catalog, and no router has "
                                   "published it from a model repository (GPULET_MODEL_REPOSITORY "
                                   "on the router)", model=name)  # fmt: skip
            await asyncio.sleep(RECORD_POLL_S)  # polls for the router's record; noqa: sleep-ok

    async def _local_file(self, published: ModelFile, url: str) -> Path:
        lock = self._locks.setdefault(published.sha256, asyncio.Lock())
        async with lock:  # two gpulets starting with one model fetch it once
            if self.settings.model_repository is not None:
                mine = self.settings.model_repository / published.relpath
                if await self._matches(mine, published):
                    return mine
            cached = self.cache_dir / f"{published.sha256}.onnx"
            if await self._matches(cached, published):
                return cached
            await self._fetch_when_listening(published, url, cached)
            return cached

    async def _fetch_when_listening(self, published: ModelFile, url: str, target: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_CONNECT_WAIT_S
        for attempt in itertools.count():
            try:
                return await self._fetch(published, url, target)
            except RouterNotListening as exc:
                delay = FETCH_RETRY_S[min(attempt, len(FETCH_RETRY_S) - 1)]
                if loop.time() + delay > deadline:
                    raise
                if attempt == 0:
                    logger.info("%s; retrying for up to %.0fs (a router starting?)", exc.message,
                                FETCH_CONNECT_WAIT_S)  # fmt: skip
                await asyncio.sleep(delay)  # back-off between connection attempts

    async def _matches(self, path: Path, published: ModelFile) -> bool:
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if stat.st_size != published.size_bytes:
            return False
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = await asyncio.to_thread(_sha256_of, path)
        return self._hashes[key] == published.sha256

    async def _fetch(self, published: ModelFile, url: str, target: Path) -> None:
        if not url:
            raise NotLoadable(f"{published.relpath} is not here and the router gave no URL to "
                              "fetch it from", model=published.served_name)  # fmt: skip
        limit = self.settings.max_model_bytes
        if published.size_bytes > limit:
            raise BadModel(f"{published.relpath}: {published.size_bytes} bytes, more than this "
                           f"agent's GPULET_MAX_MODEL_BYTES ({limit})",
                           model=published.served_name, file=published.relpath)  # fmt: skip
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=".fetch.", suffix=".tmp")
        tmp = Path(tmp_name)
        started = asyncio.get_running_loop().time()
        try:
            digest = hashlib.sha256()
            size = 0
            timeout = aiohttp.ClientTimeout(total=None, sock_read=FETCH_READ_TIMEOUT_S)
            with os.fdopen(fd, "wb") as out:
                async with aiohttp.ClientSession(timeout=timeout) as session, \
                        session.get(url) as response:  # fmt: skip
                    if response.status != 200:
                        body = (await response.read())[:500].decode(errors="replace")
                        raise Unavailable(f"fetching {published.relpath} from the router ({url}) "
                                          f"answered {response.status}: {body}")  # fmt: skip
                    async for chunk in response.content.iter_chunked(FETCH_CHUNK_BYTES):
                        size += len(chunk)
                        if size > published.size_bytes:
                            break
                        digest.update(chunk)
                        out.write(chunk)
            if size != published.size_bytes or digest.hexdigest() != published.sha256:
                raise NotLoadable(
                    f"fetched {published.relpath} from {url}: {size} bytes with sha256 "
                    f"{digest.hexdigest()[:12]}..., published as {published.size_bytes} bytes "
                    f"with sha256 {published.sha256[:12]}... (the file changed in the repository "
                    "since it was published? load the model again)",
                    model=published.served_name, file=published.relpath,
                )  # fmt: skip
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        except aiohttp.ClientConnectorError as exc:
            raise RouterNotListening(f"fetching {published.relpath}: the router at {url} "
                                     f"refused the connection ({exc.os_error})") from exc
        except aiohttp.ClientError as exc:
            raise Unavailable(f"fetching {published.relpath} from the router ({url}) failed: "
                              f"{exc!r}") from exc  # fmt: skip
        except GpuletError:
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left only when the fetch failed
        logger.info("model file fetched model=%s file=%s bytes=%d s=%.2f",
                    published.served_name, published.relpath, size,
                    asyncio.get_running_loop().time() - started)  # fmt: skip


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
