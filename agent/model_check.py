"""Does ONNX Runtime run this file? Checked once per repository file before it is profiled or
served: an operator the CPU provider lacks, a graph that fails to load, or a signature that is not
the one published is answered 400 naming the file, before any worker tries it.

The check runs in a child process (`python -m agent.model_check`): a file that crashes ONNX
Runtime takes down the child, not the agent. The child loads each model with the serving
worker's loader (same session options, signature check and warm-up run at batch 1) and prints one
JSON line: {served name: error text, or "" when it runs}.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import orjson

from agent.local_model import LocalModel
from common.errors import BackendFailed, BadModel
from common.models import ModelSpec

CHECK_TIMEOUT_S = 300.0  # loading and running one batch of a large model on a busy core


async def check_models(models: Sequence[LocalModel], checked: set[str]) -> None:
    """BadModel naming the first file ONNX Runtime cannot run; `checked` (sha256 fingerprints)
    is skipped and grows."""
    todo = [m for m in models if m.repository and m.fingerprint not in checked]
    if not todo:
        return
    errors = await run_checks(todo)
    for model in todo:
        error = errors.get(model.name, "not checked")
        if error:
            raise BadModel(f"{model.file}: ONNX Runtime cannot run it: {error}",
                           model=model.name, file=model.file)  # fmt: skip
        checked.add(model.fingerprint)


async def run_checks(todo: Sequence[LocalModel]) -> dict[str, str]:
    """{served name: why ONNX Runtime cannot run it, or ""}, from one child process."""
    request = orjson.dumps([{"name": m.name, "path": str(m.path), "spec": m.spec.to_json()}
                            for m in todo])  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.model_check", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            out, err = await child.communicate(request)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise BackendFailed(f"checking {[m.name for m in todo]} in ONNX Runtime took over "
                            f"{CHECK_TIMEOUT_S:.0f}s") from None  # fmt: skip
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise BadModel(f"{', '.join(m.file for m in todo)}: ONNX Runtime failed while loading "
                       f"them (exit code {child.returncode}): {' / '.join(tail)}",
                       model=todo[0].name, file=todo[0].file)  # fmt: skip
    errors: dict[str, str] = orjson.loads(out.splitlines()[-1])
    return errors


def check_one(name: str, path: str, spec: ModelSpec) -> str:
    from agent.worker import ModelRunner, WorkerConfig

    try:
        # One core's worth of threads (cores only size the session's thread pool here).
        config = WorkerConfig(f"check-{name}", 0, "", (0,), (name,), (path,), specs=(spec,))
        ModelRunner.load(config)
    except Exception as exc:  # onnxruntime raises several types; each is the answer
        return f"{type(exc).__name__}: {exc}"
    return ""


def main() -> None:
    wanted = orjson.loads(sys.stdin.buffer.read())
    results = {m["name"]: check_one(m["name"], m["path"], ModelSpec.from_json(m["spec"]))
               for m in wanted}  # fmt: skip
    sys.stdout.write(orjson.dumps(results).decode() + "\n")


if __name__ == "__main__":
    main()
