"""Reading a model repository folder in Triton's layout, unchanged:

    DIR/<model>/config.pbtxt            optional (common/repository/config.py)
    DIR/<model>/gpulet.toml             optional: slo_ms, rate_rps, description
    DIR/<model>/<version>/model.onnx    version: a positive integer; the file name may be changed
                                        by config.pbtxt default_model_filename

`scan(name)` reads one model folder afresh (the folder may change while gpulet runs: models and
versions are added, files replaced) into the versions it serves under its version policy, each
with its file's sha256, or the problem that keeps it from being served, naming the file and the
field. A file is hashed and its graph read once per (path, size, mtime); nothing of the weights
stays in memory.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.models import ModelSpec
from common.repository.config import (
    CONFIG_FILE,
    GPULET_FILE,
    NO_CONFIG,
    GpuletOptions,
    ModelProblem,
    TritonConfig,
    parse_config,
    parse_gpulet_toml,
)
from common.repository.onnx_graph import GraphSignature, NotOnnx, read_signature
from common.repository.signature import derive_spec

logger = logging.getLogger(__name__)

# Model folder names: what a URL path segment, a Redis key and a Prometheus label all carry
# unchanged. "@" is left out: it joins a model and a version in served names ("m@2").
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
VERSION_MARK = "@"
MAX_NAME_CHARS = 128


def served_name(model: str, version: str, latest: bool) -> str:
    """A served version's name: the model's own for its latest served version, else m@v."""
    return model if latest else f"{model}{VERSION_MARK}{version}"


def check_name(name: str) -> None:
    """ModelProblem unless `name` can be a model folder's name."""
    if len(name) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ModelProblem(
            name, f"{name!r} is not a model name: use letters, digits, '_', '.' and '-' (no "
            f"'..', '/' or '{VERSION_MARK}', at most {MAX_NAME_CHARS} characters)",
        )  # fmt: skip


@dataclass(frozen=True)
class ModelFile:
    """One served version: its file by content hash, and the signature it serves."""

    served_name: str  # "m" (the latest served version) or "m@v"
    model: str
    version: str
    relpath: str  # inside the repository: "m/3/model.onnx"
    sha256: str
    size_bytes: int
    spec: ModelSpec

    def to_json(self) -> dict[str, Any]:
        return {"served_name": self.served_name, "model": self.model, "version": self.version,
                "relpath": self.relpath, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "spec": self.spec.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelFile:
        return cls(str(data["served_name"]), str(data["model"]), str(data["version"]),
                   str(data["relpath"]), str(data["sha256"]), int(data["size_bytes"]),
                   ModelSpec.from_json(data["spec"]))  # fmt: skip


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    files: tuple[ModelFile, ...] = ()  # the served versions, ascending
    versions: tuple[str, ...] = ()  # every version folder found, ascending
    options: GpuletOptions = field(default_factory=GpuletOptions)
    problem: ModelProblem | None = None

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(f.served_name for f in self.files)

    def not_served_reason(self, version: str) -> str:
        """Why a version found on disk is not served (the version policy left it out)."""
        served = [f.version for f in self.files]
        return f"version_policy serves versions {served}" if version not in served else ""


@dataclass(frozen=True)
class _Read:
    sha256: str
    graph: GraphSignature | None
    problem: str  # why the bytes are not a model ("" when graph is set)


class RepositoryFolder:
    def __init__(self, root: Path, max_model_bytes: int) -> None:
        self.root = root
        self.max_model_bytes = max_model_bytes
        self._reads: dict[tuple[str, int, int], _Read] = {}
        self._said: set[tuple[str, str]] = set()  # (model, ignored field) already logged

    def names(self) -> list[str]:
        """Every model folder (hidden ones left out), good names or not, sorted."""
        try:
            entries = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError as exc:
            raise ValueError(f"model repository {self.root}: cannot list it: {exc}") from exc
        return [p.name for p in entries if not p.name.startswith(".")]

    def has(self, name: str) -> bool:
        try:
            check_name(name)
        except ModelProblem:
            return False
        return (self.root / name).is_dir()

    def scan_all(self) -> list[RepositoryModel]:
        return [self.scan(name) for name in self.names()]

    def scan(self, name: str) -> RepositoryModel:
        """The model's served versions, or the problem that keeps it from being served."""
        try:
            check_name(name)
            return self._scan(name)
        except ModelProblem as problem:
            return RepositoryModel(name, versions=self._versions(name), problem=problem)
        except OSError as exc:  # removed or unreadable while we read it
            return RepositoryModel(name, problem=ModelProblem(f"{name}/", f"cannot read it: {exc}"))

    def _versions(self, name: str) -> tuple[str, ...]:
        """The version folders of a model that cannot be served (the index lists each)."""
        try:
            return tuple(str(v) for v in _version_numbers(self.root / name))
        except OSError:
            return ()

    def _scan(self, name: str) -> RepositoryModel:
        folder = self.root / name
        config = self._config(name, folder)
        options = self._options(name, folder)
        versions = _version_numbers(folder)
        found = tuple(str(v) for v in versions)
        if not versions:
            raise ModelProblem(f"{name}/", "no version folder: put the model at "
                               f"{name}/1/{config.model_filename}")  # fmt: skip
        chosen = config.version_policy.choose(versions)
        if not chosen:
            raise ModelProblem(f"{name}/{CONFIG_FILE}", f"{config.version_policy.describe()} "
                               f"matches none of the version folders {versions}",
                               "version_policy")  # fmt: skip
        files = tuple(
            self._file(name, str(v), config, options, latest=v == chosen[-1]) for v in chosen
        )
        return RepositoryModel(name, files, found, options)

    def _config(self, name: str, folder: Path) -> TritonConfig:
        path = folder / CONFIG_FILE
        if not path.is_file():
            return NO_CONFIG
        config = parse_config(_read_text(path, f"{name}/{CONFIG_FILE}"), f"{name}/{CONFIG_FILE}",
                              name)  # fmt: skip
        for ignored in config.ignored:
            if (name, ignored) not in self._said:
                self._said.add((name, ignored))
                logger.info("model=%s %s: %s does not apply to gpulet; ignored", name,
                            CONFIG_FILE, ignored)  # fmt: skip
        return config

    def _options(self, name: str, folder: Path) -> GpuletOptions:
        path = folder / GPULET_FILE
        if not path.is_file():
            return GpuletOptions()
        return parse_gpulet_toml(_read_text(path, f"{name}/{GPULET_FILE}"), f"{name}/{GPULET_FILE}")

    def _file(self, name: str, version: str, config: TritonConfig, options: GpuletOptions,
              *, latest: bool) -> ModelFile:  # fmt: skip
        relpath = f"{name}/{version}/{config.model_filename}"
        path = self.root / relpath
        if not path.is_file():
            raise ModelProblem(f"{name}/{version}/", f"no {config.model_filename} in the version "
                               "folder")  # fmt: skip
        size = path.stat().st_size
        if size > self.max_model_bytes:
            raise ModelProblem(relpath, f"{size} bytes, more than GPULET_MAX_MODEL_BYTES "
                               f"({self.max_model_bytes})")  # fmt: skip
        read = self._read(path)
        if read.graph is None:
            raise ModelProblem(relpath, read.problem)
        spec = derive_spec(
            served_name(name, version, latest), version, read.graph, config, options,
            model_file=relpath, config_file=f"{name}/{CONFIG_FILE}",
        )  # fmt: skip
        return ModelFile(spec.name, name, version, relpath, read.sha256, size, spec)

    def _read(self, path: Path) -> _Read:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        cached = self._reads.get(key)
        if cached is not None:
            return cached
        read = read_model_file(path)
        self._reads = {k: v for k, v in self._reads.items() if k[0] != key[0]}
        self._reads[key] = read
        return read


def _version_numbers(folder: Path) -> list[int]:
    """Version folders: positive integers, ascending (other folders are not versions)."""
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.is_dir() and p.name.isdigit() and int(p.name) > 0)  # fmt: skip


def read_model_file(path: Path) -> _Read:
    """sha256 and graph signature of one file, through a read-only mapping (nothing copied)."""
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return _Read(hashlib.sha256(b"").hexdigest(), None, "an empty file, not an ONNX model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                digest = hashlib.sha256(view).hexdigest()
                try:
                    return _Read(digest, read_signature(view), "")
                except NotOnnx as exc:
                    return _Read(digest, None, str(exc))
            finally:
                view.release()


def _read_text(path: Path, file: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelProblem(file, f"cannot read it: {exc}") from None
