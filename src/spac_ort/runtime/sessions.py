"""The only place that builds ONNX Runtime sessions, options, providers and IO bindings."""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from ..errors import BundleError, ConfigError  # noqa: E402

# What ORT raises from a session call (Fail, InvalidArgument, RuntimeException, ...):
# with a valid bundle none of these happen, so the generator reports them as bundle faults.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in vars(ort.capi.onnxruntime_pybind11_state).values()
    if isinstance(c, type) and issubclass(c, Exception))

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


FAST_PROVIDERS = ("cpu", "cuda")      # --fast-provider choices


def fast_providers(name: str) -> tuple[str, ...]:
    """Provider list of the fast tier: "cpu" (a stand-in pool) or "cuda"."""
    if name == "cpu":
        return (CPU,)
    if name == "cuda":
        if CUDA not in ort.get_available_providers():
            raise ConfigError("the CUDA execution provider is not available in this onnxruntime; "
                              "install onnxruntime-gpu or use --fast-provider cpu")
        return (CUDA, CPU)
    raise ConfigError(f"unknown fast provider '{name}'; use cpu or cuda")


_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("intra_op_threads", default=1)


@contextlib.contextmanager
def session_threads(threads: int) -> Iterator[None]:
    """Sessions built inside get ``threads`` intra-op threads (default 1)."""
    if threads < 1:
        raise ConfigError(f"threads {threads} must be at least 1")
    token = _THREADS.set(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("provider_options", default={})


@contextlib.contextmanager
def provider_options(options: dict[str, dict[str, str]]) -> Iterator[None]:
    """Graph sessions (`Piece`) built inside pass these ONNX Runtime options to their
    providers (provider name -> options; e.g. a Jetson bundle's TensorRT engine cache)."""
    token = _OPTIONS.set(dict(options))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def with_options(providers: Sequence[str]) -> list:
    """``providers`` as ONNX Runtime takes them, with the options in force (`provider_options`)."""
    options = _OPTIONS.get()
    return [(p, options[p]) if options.get(p) else p for p in providers]


_global_pool: list[int] = []      # the size of the process's shared intra-op pool, once made


def _shared_pool(threads: int) -> None:
    """One intra-op pool for the multi-threaded sessions of the process: per-session pools of
    two threads made decoding 1.4x slower than one shared pool here (each of ~18 sessions
    woke its own thread for every operator). Once it exists every new session must use it,
    so its size is the process's thread count from then on (sessions made before keep
    their own single thread)."""
    if not _global_pool:
        ort.capi.onnxruntime_pybind11_state.set_global_thread_pool_sizes(threads, 1)
        _global_pool.append(threads)
    elif _global_pool[0] != threads:
        raise ConfigError(f"this process already runs its new sessions on a shared pool of {_global_pool[0]} "
                          f"threads; use --threads {_global_pool[0]} (asked: {threads}), or another process")


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """Many small sessions share the machine: one intra-op thread each, no spinning
    (per-session pools with spinning turn 1.8 ms into 35 ms with 17 sessions); under
    `session_threads(n)` with n > 1, the process's shared pool of n threads."""
    so = ort.SessionOptions()
    n = threads or _THREADS.get()
    if n > 1 or _global_pool:
        _shared_pool(n)
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class Piece:
    """One ONNX graph as a callable: positional numpy inputs -> list of numpy outputs,
    through a reused IO binding (``run_with_iobinding``)."""

    __slots__ = ("path", "session", "inputs", "outputs", "_binding")

    def __init__(self, path: Path, providers: Sequence[str] = (CPU,), options: ort.SessionOptions | None = None):
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), options or session_options(),
                                                providers=with_options(providers))
        except Exception as exc:  # ORT raises Fail / InvalidProtobuf / NoSuchFile
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"cannot load {path} ({first_line[:200]}); the bundle is corrupt, "
                              "re-export it with spac-export") from None
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self._binding = self.session.io_binding()

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        b = self._binding
        for name, arr in zip(self.inputs, arrays):
            b.bind_cpu_input(name, arr)
        for name in self.outputs:
            b.bind_output(name)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()


def off_host(session) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``session`` runs its nodes on a device other than the host (CUDA, ...).
    ONNX Runtime copies a host OrtValue bound as such a session's input to the device when
    it is bound, not when the session runs: a reused binding would feed the values of bind
    time. Those sessions bind their inputs again before every call (`bound_again`)."""
    return session.get_providers()[0] != CPU


def bound_again(call: Callable[[], None], binding, inputs: dict,  # type: ignore[no-untyped-def]
                kv: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """``call`` preceded by binding ``inputs`` (name -> OrtValue) again, and by ``kv`` (which
    binds a KV cache again), for a session that `off_host`. Values already on the device
    (rotary tables, a cache there) are read in place: they are not bound again."""
    pairs = [(name, value) for name, value in inputs.items() if value.device_name().lower() == "cpu"]

    def again() -> None:
        for name, value in pairs:
            binding.bind_ortvalue_input(name, value)
        if kv is not None:
            kv()
        call()
    return again
