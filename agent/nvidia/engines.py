"""GPU engines behind the worker's `ModelRunner`: ONNX Runtime's CUDA execution provider, or the
model zoo's own PyTorch nets on CUDA where onnxruntime-gpu is not installed.

Imported only inside a GPU gpulet's worker (or profiling process), after its environment is
set (agent.nvidia.worker_env): onnxruntime and torch are imported in the functions below, never
at module level. Each engine gives sessions with ONNX Runtime's `run(None, feeds) -> [arrays]`,
one per model per process, warmed up before the worker says ready.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.worker import ModelRunner, WorkerConfig, check_signature
from common import frames
from common.models import CATALOG, ModelSpec

logger = logging.getLogger(__name__)

ENGINE_ORT_CUDA = "onnxruntime-cuda"
ENGINE_TORCH_CUDA = "torch-cuda"
PREFERENCES = ("auto", "onnxruntime", "torch")
# Warm-up batches: the first run of a new batch shape allocates its buffers and picks its
# kernels (cuDNN), which would otherwise land on a live request.
GPU_WARMUP_BATCHES = (1, 32)
# Serving sees many batch sizes; ONNX Runtime's default EXHAUSTIVE cuDNN search would time
# every conv algorithm on each new shape, during a request. HEURISTIC picks without timing.
ORT_CUDA_OPTIONS = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}


class EngineUnavailable(RuntimeError):
    """No engine asked for can run on a GPU here; the message says what to install."""


def expected_engine(preference: str) -> str:
    """The engine a worker will pick, judged from installed packages without importing them
    (the agent must not load CUDA): onnxruntime-gpu installed means its CUDA provider."""
    if preference == "onnxruntime":
        return ENGINE_ORT_CUDA
    if preference == "torch":
        return ENGINE_TORCH_CUDA
    return ENGINE_ORT_CUDA if _installed("onnxruntime-gpu") else ENGINE_TORCH_CUDA


def engine_installed(preference: str) -> bool:
    """Whether the packages an engine needs are installed (not whether a GPU works)."""
    ort = _installed("onnxruntime-gpu")
    torch = importlib.util.find_spec("torch") is not None
    return {"onnxruntime": ort, "torch": torch}.get(preference, ort or torch)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def choose_engine(preference: str) -> str:
    """The engine to run, tried in order; EngineUnavailable names why each one cannot."""
    if preference not in PREFERENCES:
        raise ValueError(f"GPU engine {preference!r}: use one of {PREFERENCES}")
    reasons = []
    if preference in ("auto", "onnxruntime"):
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            return ENGINE_ORT_CUDA
        reasons.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has "
                       f"{providers}): install onnxruntime-gpu")  # fmt: skip
    if preference in ("auto", "torch"):
        try:
            import torch
        except ImportError:
            reasons.append("torch is not installed")
        else:
            if torch.cuda.is_available():
                return ENGINE_TORCH_CUDA
            reasons.append(f"torch {torch.__version__} sees no CUDA device (a CPU build, or "
                           "the device named is not there)")  # fmt: skip
    raise EngineUnavailable(f"no GPU engine can run under {binding_text()}: " + "; ".join(reasons))


def binding_text() -> str:
    """The partition this process was given, as its environment says (for error messages)."""
    names = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    return ", ".join(f"{n}={os.environ.get(n)!r}" for n in names)


def load_gpu_runner(config: WorkerConfig) -> ModelRunner:
    """The gpulet's models on the engine chosen, warmed up, with the GPU memory it holds."""
    engine = choose_engine(config.gpu_engine or "auto")
    started = time.perf_counter()
    sessions: dict[str, BoundSession] | dict[str, TorchSession]
    specs = {m: config.spec_of(m) for m in config.models}
    if engine == ENGINE_ORT_CUDA:
        sessions = ort_cuda_sessions(config.models, config.model_paths, len(config.cores), specs)
    else:
        foreign = [m for m in config.models if m not in CATALOG]
        if foreign:  # the torch engine runs the zoo's own nets; a repository model is a file
            raise EngineUnavailable(f"{foreign}: repository models run on ONNX Runtime's CUDA "
                                    "provider (install onnxruntime-gpu), not on the torch "
                                    "engine")  # fmt: skip
        sessions = torch_sessions(config.models, "cuda", len(config.cores))
    runner = ModelRunner(sessions, specs, 0.0, engine=engine)
    runner.warm_up(GPU_WARMUP_BATCHES)
    runner.load_ms = (time.perf_counter() - started) * 1000
    runner.gpu_memory_bytes = gpu_memory_bytes(engine)
    logger.info("gpu engine=%s models=%s memory_mb=%.0f", engine, ",".join(config.models),
                runner.gpu_memory_bytes / 2**20)  # fmt: skip
    return runner


def gpu_memory_bytes(engine: str) -> int:
    """What this process holds on its GPU: torch's allocator knows its own peak; for ONNX
    Runtime ask NVML about our pid (0 when nvidia-ml-py is missing). The CUDA context itself
    (some hundreds of MB) is in NVML's figure, not in torch's."""
    if engine == ENGINE_TORCH_CUDA:
        import torch

        return int(torch.cuda.max_memory_reserved())
    from agent.nvidia.nvml import process_gpu_memory_bytes

    return process_gpu_memory_bytes(os.getpid()) or 0


# ONNX Runtime, CUDA execution provider ---------------------------------------------------------
def ort_cuda_sessions(
    models: tuple[str, ...], paths: tuple[str, ...], cores: int,
    specs: Mapping[str, ModelSpec] | None = None,
) -> dict[str, BoundSession]:
    import onnxruntime as ort

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"model files missing: {missing}; run `gpulet models build` "
                                "(or GPULET_GPU_ENGINE=torch, which needs none)")  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, cores)  # CPU-side ops only; the GPU does the work
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    sessions = {}
    for name, path in zip(models, paths, strict=True):
        session = ort.InferenceSession(
            path, options, providers=[("CUDAExecutionProvider", ORT_CUDA_OPTIONS)]
        )
        # ONNX Runtime falls back to the CPU silently when CUDA fails to start; say so instead.
        if session.get_providers()[:1] != ["CUDAExecutionProvider"]:
            raise EngineUnavailable(f"{name}: CUDA provider did not start (providers in use: "
                                    f"{session.get_providers()}); see the worker log")  # fmt: skip
        spec = (specs or {}).get(name) or CATALOG[name]
        check_signature(spec, session)
        sessions[name] = BoundSession(session, spec)
    return sessions


class BoundSession:
    """An ORT CUDA session run through IO binding: each input goes to the GPU in one explicit
    copy and the outputs stay there until one copy back after the run, rather than ORT
    allocating host outputs per run. It pays most for the image models' 600 KB per item
    inputs; the gpu tests check its answers against plain `run`."""

    def __init__(self, session: Any, spec: ModelSpec) -> None:
        self.session = session
        self.output_names = [t.name for t in spec.outputs]

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, _names: object, feeds: dict[str, frames.Array]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs


# PyTorch, the model zoo's own nets -------------------------------------------------------------
def torch_sessions(models: tuple[str, ...], device: str, cores: int) -> dict[str, TorchSession]:
    """Each model built from common/modelzoo/nets.py with the seed its ONNX file was exported
    with: the same weights, so the same answers (to float tolerance) as the ONNX files."""
    import torch

    from common.modelzoo.cache import MODEL_SEED
    from common.modelzoo.nets import make_net

    torch.set_num_threads(max(1, cores))
    sessions = {}
    for name in models:
        net, _ = make_net(name, MODEL_SEED)
        sessions[name] = TorchSession(net.to(device).eval(), CATALOG[name], device)
    return sessions


class TorchSession:
    """A torch module behind ONNX Runtime's `run(None, feeds)`; copying the outputs to the host
    waits for the GPU, so a run's time is its full latency."""

    def __init__(self, net: Any, spec: ModelSpec, device: str) -> None:
        self.net = net
        self.spec = spec
        self.device = device

    def run(self, _names: object, feeds: dict[str, frames.Array]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            args = [
                torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device)
                for t in self.spec.inputs
            ]
            out = self.net(*args)
            outs = out if isinstance(out, tuple | list) else (out,)
            return [o.detach().to("cpu").numpy() for o in outs]
