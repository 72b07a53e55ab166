"""Execution providers for the graphs outside the experts (``spac-run --provider``), by
short name, each checked against this onnxruntime build.

    session_providers("nnapi")  -> ("NnapiExecutionProvider", "CPUExecutionProvider")

The CPU provider always comes last: ONNX Runtime runs there what the first provider does
not take. NPU providers (NNAPI, QNN, CoreML) have no TopK, so a portable bundle's router
graphs stay on the CPU under them (`piece_providers`).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from .sessions import CPU, CUDA, TENSORRT, ort

PROVIDERS = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": TENSORRT,
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
NPU = {"NnapiExecutionProvider", "QNNExecutionProvider", "CoreMLExecutionProvider"}

# where each provider comes from, for the error when this build lacks it
_WHERE = {
    "cuda": "install onnxruntime-gpu (CUDA 12) on a machine with an NVIDIA GPU",
    "tensorrt": "install an onnxruntime-gpu build with TensorRT (on Jetson: the JetPack wheel)",
    "xnnpack": "use the onnxruntime-android or onnxruntime-mobile package, or a build with --use_xnnpack",
    "nnapi": "run on Android with the onnxruntime-android package",
    "qnn": "use onnxruntime-qnn on a Snapdragon device",
    "coreml": "run on macOS or iOS with an onnxruntime build that has CoreML",
}


def session_providers(name: str) -> tuple[str, ...]:
    """The provider list for ``name`` (a key of `PROVIDERS`), the CPU provider last."""
    ep = PROVIDERS.get(name)
    if ep is None:
        raise ConfigError(f"unknown provider '{name}'; use one of {', '.join(PROVIDERS)}")
    if ep == CPU:
        return (CPU,)
    available = ort.get_available_providers()
    if ep not in available:
        have = ", ".join(k for k, v in PROVIDERS.items() if v in available)
        raise ConfigError(f"execution provider {ep} is not in this onnxruntime build (it has: {have}); "
                          f"{_WHERE[name]}, or use --provider cpu")
    if name == "tensorrt" and CUDA in available:
        return (ep, CUDA, CPU)          # what TensorRT does not take runs on CUDA before the CPU
    return (ep, CPU)


def piece_providers(providers: Sequence[str], runs_topk: bool) -> tuple[str, ...]:
    """The providers of one graph: a graph with TopK runs on the CPU under an NPU provider."""
    if runs_topk and providers and providers[0] in NPU:
        return (CPU,)
    return tuple(providers)
