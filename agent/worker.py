"""The worker: one spawned process per gpulet, running its models' ONNX Runtime sessions.

Start-up order matters: the partition limits (the environment that binds a GPU gpulet to its
GPU, MIG instance or MPS share, then CPU affinity) are applied before onnxruntime or torch is
imported, so CUDA reads them when it initialises and ORT's thread pool starts inside the core
set. Then the worker connects to its agent's unix socket, loads and warms up its models, opens
its own socket for routers on this host (batches sent there skip the agent's hop), says "ready",
and serves one message at a time from either: `run` (a batch, raw tensors), `ping`; `stop` and
the agent's socket closing end it.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import frames
from common.logs import configure_logging
from common.models import CATALOG, ModelSpec
from common.procs import die_with_parent
from common.shared_memory import SharedBatchError, read_batch
from common.stream import StreamClosed, recv_message, send_message

logger = logging.getLogger(__name__)

WARMUP_RUNS = 2
# A router that stops reading (or sends half a frame) for this long loses its connection, so
# it cannot stall the gpulet's other callers.
DIRECT_IO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    gpulet_id: str
    generation: int  # which start of this gpulet; lets the agent ignore a stale connection
    socket_path: str
    cores: tuple[int, ...]
    models: tuple[str, ...]
    model_paths: tuple[str, ...]
    log_level: str = "INFO"
    # Set in the worker before any CUDA library loads (agent.nvidia.worker_env).
    env: tuple[tuple[str, str], ...] = ()
    # None: ONNX Runtime on the CPU; else the GPU engine asked for ("auto", "onnxruntime",
    # "torch"), chosen in the worker by agent.nvidia.engines.
    gpu_engine: str | None = None
    # The models' signatures, in `models` order; empty: the catalog's (zoo models).
    specs: tuple[ModelSpec, ...] = ()
    # Where to listen for routers' batches once ready; "": the agent's socket only.
    direct_socket: str = ""

    def spec_of(self, name: str) -> ModelSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        return CATALOG[name]


@dataclass(frozen=True)
class WorkerSetup:
    """What a device adds to its gpulets' workers (see WorkerConfig.env and gpu_engine)."""

    env: tuple[tuple[str, str], ...] = ()
    gpu_engine: str | None = None


def worker_main(config: WorkerConfig) -> None:
    """Entry point of the spawned process."""
    configure_logging(config.log_level, process_name=f"worker[{config.gpulet_id}]")
    # Ctrl-C in a terminal reaches the whole process group; the agent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    os.environ.update(dict(config.env))
    if config.cores:
        os.sched_setaffinity(0, set(config.cores))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(config.socket_path)
    hello = {"op": "hello", "gpulet_id": config.gpulet_id, "generation": config.generation}
    send_message(sock, frames.encode({**hello, "pid": os.getpid()}))
    try:
        runner = load_runner(config)
    except Exception as exc:
        logger.exception("worker load failed gpulet=%s", config.gpulet_id)
        send_message(sock, frames.encode({"op": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
    listener = listen_direct(config.direct_socket)
    ready = {"op": "ready", "load_ms": runner.load_ms, "engine": runner.engine,
             "gpu_memory_bytes": runner.gpu_memory_bytes,
             "direct_socket": config.direct_socket if listener is not None else None}  # fmt: skip
    send_message(sock, frames.encode(ready))
    logger.info(
        "worker ready gpulet=%s models=%s cores=%s engine=%s load_ms=%.0f",
        config.gpulet_id, ",".join(config.models), config.cores, runner.engine, runner.load_ms,
    )  # fmt: skip
    try:
        serve(sock, runner, listener, frames.encode(hello))
    except StreamClosed:
        logger.info("agent closed the socket; worker exits gpulet=%s", config.gpulet_id)
    finally:
        sock.close()
        if listener is not None:
            listener.close()


def listen_direct(path: str) -> socket.socket | None:
    """The worker's own socket for routers; None when not asked for or it cannot be made (the
    agent's path still serves)."""
    if not path:
        return None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(16)
    except OSError as exc:
        logger.warning("no direct socket at %s (%s); batches come through the agent", path, exc)
        listener.close()
        return None
    return listener


def serve(
    agent: socket.socket,
    runner: ModelRunner,
    listener: socket.socket | None = None,
    hello: bytes = b"",
) -> None:
    """Answer messages from the agent and from routers connected to `listener`, one at a time,
    each on the socket it came in on, until the agent says stop or goes away. A router's
    connection failing closes that connection only."""
    selector = selectors.DefaultSelector()
    selector.register(agent, selectors.EVENT_READ)
    if listener is not None:
        selector.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                _accept(listener, selector, hello)
                continue
            try:
                message = frames.decode(recv_message(sock))
                reply = _answer(runner, message)
                if reply is None and sock is agent:
                    return  # "stop": the agent's word only
                if reply:
                    send_message(sock, reply)
            except (OSError, frames.FrameError):
                if sock is agent:
                    raise StreamClosed("the agent's socket failed") from None
                selector.unregister(sock)
                sock.close()


def _accept(listener: socket.socket, selector: selectors.BaseSelector, hello: bytes) -> None:
    conn, _ = listener.accept()
    conn.settimeout(DIRECT_IO_TIMEOUT_S)
    try:
        send_message(conn, hello)  # the router checks it reached the gpulet it meant
    except OSError:
        conn.close()
        return
    selector.register(conn, selectors.EVENT_READ)


def _answer(runner: ModelRunner, message: frames.Frame) -> bytes | None:
    """The reply to one message; b"" for none; None to stop."""
    op = message.header.get("op")
    if op == "run":
        return runner.handle_run(message)
    if op == "ping":
        return frames.encode({"op": "pong", "id": message.header.get("id")})
    if op == "stop":
        return None
    logger.warning("unknown op %r ignored", op)
    return b""


def load_runner(config: WorkerConfig) -> ModelRunner:
    """ONNX Runtime on the CPU, or a GPU engine (whose module loads only for GPU gpulets)."""
    if config.gpu_engine is None:
        return ModelRunner.load(config)
    from agent.nvidia.engines import load_gpu_runner

    return load_gpu_runner(config)


class ModelRunner:
    """Sessions of one gpulet: ONNX Runtime's, or any with the same `run(None, feeds)`; imports
    onnxruntime only once the partition limits are set."""

    def __init__(
        self,
        sessions: dict[str, Any],
        specs: dict[str, ModelSpec],
        load_ms: float,
        engine: str = "onnxruntime-cpu",
    ) -> None:
        self.sessions = sessions
        self.specs = specs
        self.load_ms = load_ms
        self.engine = engine
        self.gpu_memory_bytes = 0  # what a GPU engine holds after warm-up

    @classmethod
    def load(cls, config: WorkerConfig) -> ModelRunner:
        import onnxruntime as ort

        started = time.perf_counter()
        options = ort.SessionOptions()
        # One intra-op thread per core of the partition: more threads oversubscribe the core
        # set (machine-notes section 3 measured 1.1-1.7x slower requests when they do).
        options.intra_op_num_threads = max(1, len(config.cores) or (os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        sessions: dict[str, Any] = {}
        specs: dict[str, ModelSpec] = {}
        for name, path in zip(config.models, config.model_paths, strict=True):
            spec = config.spec_of(name)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            check_signature(spec, session)
            sessions[name], specs[name] = session, spec
        runner = cls(sessions, specs, 0.0)
        runner.warm_up()
        runner.load_ms = (time.perf_counter() - started) * 1000
        return runner

    def warm_up(self, batches: tuple[int, ...] = (1,)) -> None:
        for name, spec in self.specs.items():
            for batch in batches:
                for _ in range(WARMUP_RUNS):
                    self.run(name, warmup_inputs(spec, batch))

    def run(self, model: str, inputs: dict[str, frames.Array]) -> dict[str, frames.Array]:
        session = self.sessions[model]
        spec = self.specs[model]
        if not spec.batched:  # one item, sent as a batch of one: the graph takes it without
            inputs = {name: array[0] for name, array in inputs.items()}
        outputs = session.run(None, inputs)
        if not spec.batched:
            outputs = [np.asarray(out)[np.newaxis] for out in outputs]
        names = (t.name for t in spec.outputs)
        return dict(zip(names, outputs, strict=True))

    def handle_run(self, message: frames.Frame) -> bytes:
        header = message.header
        request_id = header.get("id")
        model = str(header.get("model"))
        if model not in self.sessions:
            return _error(request_id, "unavailable", f"model {model!r} is not loaded here")
        # The deadline is on CLOCK_MONOTONIC, which all processes of one host share.
        deadline = header.get("deadline_monotonic_s")
        if deadline is not None and time.monotonic() >= float(deadline):
            return _error(request_id, "deadline_exceeded", "deadline passed before the batch ran")
        started = time.perf_counter()
        try:
            shared = header.get("shm_batch")
            inputs = message.tensors if shared is None else read_batch(str(shared))
        except SharedBatchError as exc:
            return _error(request_id, "backend_failed", str(exc))
        try:
            outputs = self.run(model, inputs)
        except Exception as exc:  # onnxruntime raises several types; all mean the batch failed
            logger.exception("batch failed gpulet model=%s id=%s", model, request_id)
            return _error(request_id, "backend_failed", f"{type(exc).__name__}: {exc}")
        compute_ms = (time.perf_counter() - started) * 1000
        return frames.encode({"op": "result", "id": request_id, "compute_ms": compute_ms}, outputs)


def _error(request_id: Any, code: str, message: str) -> bytes:
    return frames.encode({"op": "error", "id": request_id, "code": code, "message": message})


def warmup_inputs(spec: ModelSpec, batch: int = 1) -> dict[str, frames.Array]:
    return {t.name: np.zeros((batch, *t.item_shape), dtype=t.dtype) for t in spec.inputs}


# ONNX Runtime's type names -> numpy dtype names.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(float16)": "float16", "tensor(bool)": "bool",
              **{f"tensor({t})": t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                             "uint32", "uint64")}}  # fmt: skip


def check_signature(spec: ModelSpec, session: Any) -> None:
    """Refuse a model file whose inputs or outputs differ from the signature it is served as."""
    pairs = ((spec.inputs, session.get_inputs()), (spec.outputs, session.get_outputs()))
    for declared, actual in pairs:
        got = [(a.name, _ORT_TYPES.get(a.type, a.type)) for a in actual]
        want = [(t.name, t.dtype) for t in declared]
        if got != want:
            raise ValueError(f"model {spec.name}: file has {got}, its signature says {want}")
