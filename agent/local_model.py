"""A model as this agent runs it: its signature, its ONNX file here, and the fingerprint its
profile rows are valid for. Zoo models come from the catalog and the build cache; repository
models from the router's published records and a file fetched or found locally
(agent/model_files.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.models import CATALOG, ModelSpec
from common.modelzoo.cache import fingerprint, onnx_path


@dataclass(frozen=True)
class LocalModel:
    spec: ModelSpec
    path: Path
    fingerprint: str  # the zoo's source fingerprint, or "sha256:<hex>" of a repository file
    repository: bool = False  # a user's file: checked by ONNX Runtime before it serves
    file: str = ""  # what errors name: the path inside the repository, or the zoo file's

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def max_batch(self) -> int:
        """The largest batch worth measuring (0: no limit of the model's own)."""
        return self.spec.max_batch_size


class ModelResolver(Protocol):
    """Finds each named model's signature and local file (agent/model_files.py)."""

    async def resolve(
        self, names: Iterable[str], *, wait_s: float = 0.0
    ) -> dict[str, LocalModel]: ...

    async def fingerprint(self, name: str) -> str | None:
        """What `name` is now (its file's sha256, or the zoo's fingerprint), fetching nothing;
        None when the router does not publish it and the catalog lacks it."""
        ...


def zoo_model(model_dir: Path, name: str) -> LocalModel:
    """A catalog model in the build cache (built or not)."""
    path = onnx_path(model_dir, name)
    return LocalModel(CATALOG[name], path, fingerprint(name), file=str(path))
