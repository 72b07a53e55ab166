"""The KV cache of the fused graphs: per-layer buffers the attention updates in place, in
host memory, or on the GPU when the attention runs there (fp16 session graphs on the CUDA
provider: a jetson bundle), so no call copies the cache across the link."""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from ..errors import BundleError
from ..manifest import Manifest
from .sessions import CUDA, TENSORRT, ort

_BUFFER_SETS = itertools.count(1)


def ortvalue(arr: np.ndarray, device: Optional[str] = None):  # type: ignore[no-untyped-def]
    """An OrtValue over ``arr``'s memory (it keeps ``arr`` alive), or with ``device`` (e.g.
    "cuda") a copy of ``arr`` placed there."""
    if device is None:
        return ort.OrtValue.ortvalue_from_numpy(arr)
    return ort.OrtValue.ortvalue_from_numpy(arr, device, 0)


def kv_device(manifest: Manifest, providers: Sequence[str]) -> Optional[str]:
    """Where a fused model's KV cache lives: "cuda" when its attention runs on the GPU (the
    fp16 session graphs of a jetson bundle under the CUDA provider, or under TensorRT ahead
    of CUDA: TensorRT has no kernel for the fused attention, which falls to CUDA; the fp32
    fused attention has no CUDA kernel and runs on the CPU), else None: host memory."""
    half = manifest.target is not None and manifest.target.half_precision
    first = [p for p in providers if p != TENSORRT]
    return "cuda" if half and len(first) > 0 and first[0] == CUDA else None


HOST_POSITIONS = 256        # a host cache's first capacity; it doubles as it fills
DEVICE_POSITIONS = 4096     # a device cache's first capacity (or the model's length, if shorter)


def first_capacity(device: Optional[str], max_positions: int) -> int:
    """The positions a new cache holds before it grows. On a device the cache's length is
    part of the attention's shape, and ONNX Runtime's CUDA attention takes 40-110 ms on a
    session's first call at each new (window width, cache length) pair (measured on the
    H200, docs/benchmarks.md section 8g): one long first capacity keeps that to the widths
    warmed at load. 4096 positions of Qwen3-30B-A3B's cache are 8 MB per layer in fp16."""
    return HOST_POSITIONS if device is None else max(HOST_POSITIONS, min(max_positions, DEVICE_POSITIONS))


def kv_dtype(session, name: str) -> type:  # type: ignore[no-untyped-def]
    """The element type of a fused graph's KV input ``name``: fp16 in a jetson bundle's fp16
    graphs (`targets.convert.to_fp16`), else fp32."""
    kind = next((i.type for i in session.get_inputs() if i.name == name), None)
    if kind is None:
        raise BundleError(f"a fused graph has no KV input '{name}'; re-export the bundle")
    return np.float16 if kind == "tensor(float16)" else np.float32


class FusedKV:
    """Per-layer KV buffers [1, KV, capacity, D] the layer graphs update in place; rollback
    after rejected draft tokens is a length change. Grows by doubling (a copy). ``device``
    "cuda": the buffers are GPU allocations (``keys`` and ``values`` then stay empty).
    ``dtype``: the graphs' KV element type (`kv_dtype`)."""

    def __init__(self, num_layers: int, heads: int, key_dim: int, value_dim: int, capacity: int = HOST_POSITIONS,
                 device: Optional[str] = None, dtype: type = np.float32):
        self.dtype = dtype
        self.length = 0
        self.capacity = 0
        self.generation = 0             # unique per buffer set: bindings over other buffers are stale
        self.device = device
        self._dims = (num_layers, heads, key_dim, value_dim)
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.key_values: list = []
        self.value_values: list = []
        self.reserve(capacity)

    def reserve(self, positions: int) -> None:
        if positions <= self.capacity:
            return
        layers, heads, kd, vd = self._dims
        cap = max(positions, 2 * self.capacity)
        keys = [np.zeros((1, heads, cap, kd), self.dtype) for _ in range(layers)]
        values = [np.zeros((1, heads, cap, vd), self.dtype) for _ in range(layers)]
        old = (self.keys + self.values if self.device is None
               else [v.numpy() for v in self.key_values + self.value_values] if self.length else [])
        for new, before in zip(keys + values, old):
            new[:, :, :self.length] = before[:, :, :self.length]
        self.capacity = cap
        if self.device is None:
            self.keys, self.values = keys, values
        self.key_values = [ortvalue(k, self.device) for k in keys]
        self.value_values = [ortvalue(v, self.device) for v in values]
        self.generation = next(_BUFFER_SETS)

    def bind(self, binding, layer: int, names: tuple[str, str, str, str]) -> None:  # type: ignore[no-untyped-def]
        """Bind ``layer``'s buffers to ``binding`` as past key/value (inputs) and present
        key/value (outputs): the same memory, updated in place."""
        past_k, past_v, present_k, present_v = names
        binding.bind_ortvalue_input(past_k, self.key_values[layer])
        binding.bind_ortvalue_input(past_v, self.value_values[layer])
        binding.bind_ortvalue_output(present_k, self.key_values[layer])
        binding.bind_ortvalue_output(present_v, self.value_values[layer])

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (rollback after rejected draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length
