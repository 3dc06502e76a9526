"""Batches through shared memory (/dev/shm) between a router and workers on one host.

Over the two hops (router -> agent over HTTP, agent -> worker over a unix socket) a batch's
bytes are copied by each process and kernel on the way: for a 600 KB image, ~1 ms at c=1
(py-spy on resnet18 requests; the agent's share fell from 1.4 to 0.6 ms a request). Where the
router sees the agent's /dev/shm, it writes the batch there once, as one frame (common.frames),
and sends only the file's name; the worker reads it back. The files are kept and written over
(BatchSlots). The agent proves that it shares the router's /dev/shm with a probe file whose name
it advertises (AgentInfo.shared_memory): a router in another container or on another host does
not find it, and sends the bytes inline as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from common import frames

SHM_DIR = Path("/dev/shm")
BATCH_PREFIX = "gpulet-batch-"
PROBE_PREFIX = "gpulet-probe-"
# Below this a batch's bytes cost less inline than a file's create, write, read and unlink.
MIN_SHARED_BYTES = 64 * 1024
# A file this old and unlocked was left by a process that died (sweep_orphans).
ORPHAN_AGE_S = 60.0
_NAME = re.compile(r"^gpulet-(batch|probe)-[0-9a-f]{32}$")
_LENGTH = struct.Struct("<Q")  # a slot holds u64 length | frame, and maybe an older frame's tail


class SharedBatchError(frames.FrameError):
    """A shared batch that cannot be read: a bad name, gone (its sender gave up), or bad bytes."""


def _path(name: str) -> Path:
    if not _NAME.match(name):
        raise SharedBatchError(f"{name!r} is not a shared batch name")
    return SHM_DIR / name


def _create_locked(name: str) -> int:
    """A new file under /dev/shm, open, with an exclusive lock its owner holds until it closes
    it or dies: the lock, not a pid (pids repeat across containers), tells an orphan."""
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        _drop(name, fd)
        raise
    return fd


_held_probes: dict[str, int] = {}  # probe name -> its locked descriptor, while it stands


def create_probe() -> str | None:
    """A probe file's name (its content is the name too); None where /dev/shm is not usable."""
    name = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        fd = _create_locked(name)
    except OSError:
        return None
    try:
        os.write(fd, name.encode())
    except OSError:
        _drop(name, fd)
        return None
    _held_probes[name] = fd
    return name


def sweep_orphans(min_age_s: float = ORPHAN_AGE_S) -> int:
    """Remove slots and probes whose owner died without removing them (a SIGKILL): no process
    holds their lock. Files younger than `min_age_s` are left, as one just created may not be
    locked yet. Returns how many were removed."""
    removed = 0
    try:
        entries = list(SHM_DIR.glob("gpulet-*"))
    except OSError:
        return 0
    for path in entries:
        if not _NAME.match(path.name):
            continue
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner lives
        finally:
            os.close(fd)  # also drops our lock, if we took it
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def sees_probe(name: str) -> bool:
    """Whether this process shares the /dev/shm that the probe `name` was created in."""
    try:
        return _path(name).read_text() == name
    except (OSError, SharedBatchError, UnicodeDecodeError):
        return False


class BatchSlots:
    """The /dev/shm files one router writes batches into. A file whose batch was answered is
    written over by a later batch: a fresh file costs its pages' allocation and release on every
    batch (~0.5 ms of the router's CPU for 600 KB). Reuse is safe once the agent has answered:
    the worker read the batch before it ran it, or, if the agent gave up first, the worker's
    late read can only spoil a result nobody waits for. A batch not answered (a timeout, a
    dropped connection) gives its file up for good."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._free: list[tuple[str, int]] = []  # (name, open descriptor)
        self._busy: dict[str, int] = {}

    def write(self, tensors: Mapping[str, frames.Array]) -> str | None:
        """The tensors as one frame in a slot, the slot's name; None if it cannot be written
        (no space in /dev/shm: the caller sends them inline)."""
        if self._free:
            name, fd = self._free.pop()
        else:
            name = f"{BATCH_PREFIX}{uuid.uuid4().hex}"
            try:
                fd = _create_locked(name)
            except OSError:
                return None
        parts = frames.encode_parts({}, tensors)
        length = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        try:
            # tmpfs writes whole; a short write means it is full.
            if os.pwritev(fd, [_LENGTH.pack(length), *parts], 0) != _LENGTH.size + length:
                raise OSError("short write")
        except OSError:
            _drop(name, fd)
            return None
        self._busy[name] = fd
        return name

    def release(self, name: str, *, answered: bool) -> None:
        fd = self._busy.pop(name, None)
        if fd is None:
            return
        if answered and len(self._free) < self.keep:
            self._free.append((name, fd))
        else:
            _drop(name, fd)

    def close(self) -> None:
        for name, fd in [*self._free, *self._busy.items()]:
            _drop(name, fd)
        self._free, self._busy = [], {}


def _drop(name: str, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    remove_batch(name)


def read_batch(name: str) -> dict[str, frames.Array]:
    """The tensors of the shared batch `name` (owned by the caller: the slot is reused)."""
    try:
        with _path(name).open("rb", buffering=0) as file:
            head = file.read(_LENGTH.size)
            (length,) = _LENGTH.unpack(head) if len(head) == _LENGTH.size else (-1,)
            size = os.fstat(file.fileno()).st_size
            if not 0 <= length <= size - _LENGTH.size:
                raise SharedBatchError(f"shared batch {name} is not whole ({size} bytes)")
            buffer = bytearray(length)
            if file.readinto(buffer) != length:
                raise SharedBatchError(f"shared batch {name} changed while it was read")
    except FileNotFoundError as exc:
        raise SharedBatchError(f"shared batch {name} is gone (its sender gave up)") from exc
    except OSError as exc:
        raise SharedBatchError(f"shared batch {name} cannot be read: {exc}") from exc
    return frames.decode(buffer).tensors


def remove_batch(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, SharedBatchError):
        _path(name).unlink()


def remove_probe(name: str) -> None:
    fd = _held_probes.pop(name, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    remove_batch(name)
