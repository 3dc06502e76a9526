"""`gpulet up --model-repository DIR`: which of the folder's models to serve, checked before
anything starts, and what the router and agent are told.

    1. read every model folder (common/repository/layout.py);
    2. models named with --models must be servable (else exit 2, naming the file and field);
       without --models, every servable model is served and the others are listed with why;
    3. ONNX Runtime loads and runs each served file once (agent/model_check.py): a named model it
       cannot run stops `gpulet up`, an unnamed one is left out and said so;
    4. the router gets the model names, the agent each served version's name (a model's latest
       served version under its own name, others as m@v); SLOs apply to every served version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.models import ModelSpec
from common.repository.layout import RepositoryFolder, RepositoryModel

logger = logging.getLogger(__name__)


class RepositoryUnusable(ValueError):
    """`gpulet up` cannot serve from this repository as asked; the message says why."""


@dataclass(frozen=True)
class RepositoryStart:
    root: Path
    models: tuple[str, ...]  # the router's GPULET_MODELS
    specs: tuple[ModelSpec, ...]  # every served version (what the agent prepares, warm-up)

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def by_served_name(self, per_model: Mapping[str, float]) -> dict[str, float]:
        """A model's value (SLO, rate: from --config) for each of its served versions."""
        return {s.name: per_model[m] for m in self.models for s in self.specs
                if m in per_model and s.name.partition("@")[0] == m}  # fmt: skip


def plan_start(root: Path, named: Sequence[str], max_model_bytes: int) -> RepositoryStart:
    if not root.is_dir():
        raise RepositoryUnusable(f"--model-repository {root}: no such folder")
    folder = RepositoryFolder(root.resolve(), max_model_bytes)
    names = list(named) or folder.names()
    chosen: list[RepositoryModel] = []
    for name in names:
        if named and not folder.has(name):
            held = ", ".join(folder.names()) or "no model folder"
            raise RepositoryUnusable(f"--models names {name}, which {root} does not hold; it has "
                                     f"{held}")  # fmt: skip
        model = folder.scan(name)
        if model.problem is None:
            chosen.append(model)
        elif named:
            raise RepositoryUnusable(f"model {name} cannot be served: {model.problem}")
        else:
            logger.warning("model=%s left out: %s", name, model.problem)
    chosen = _runnable(folder.root, chosen, strict=bool(named))
    if not chosen:
        raise RepositoryUnusable(f"{root} holds no model gpulet can serve (see above); put one at "
                                 f"{root}/<model>/1/model.onnx")  # fmt: skip
    return RepositoryStart(folder.root, tuple(m.name for m in chosen),
                           tuple(f.spec for m in chosen for f in m.files))  # fmt: skip


def _runnable(
    root: Path, models: list[RepositoryModel], *, strict: bool
) -> list[RepositoryModel]:
    """The models whose every served file ONNX Runtime loads and runs."""
    from agent.local_model import LocalModel
    from agent.model_check import run_checks

    local = [LocalModel(f.spec, root / f.relpath, f"sha256:{f.sha256}", repository=True,
                        file=f.relpath) for m in models for f in m.files]  # fmt: skip
    if not local:
        return []
    errors = asyncio.run(run_checks(local))
    kept: list[RepositoryModel] = []
    for model in models:
        failed = [(f.relpath, errors.get(f.served_name, "")) for f in model.files
                  if errors.get(f.served_name, "not checked")]  # fmt: skip
        if not failed:
            kept.append(model)
            continue
        why = f"{failed[0][0]}: ONNX Runtime cannot run it: {failed[0][1] or 'not checked'}"
        if strict:
            raise RepositoryUnusable(f"model {model.name} cannot be served: {why}")
        logger.warning("model=%s left out: %s", model.name, why)
    return kept
