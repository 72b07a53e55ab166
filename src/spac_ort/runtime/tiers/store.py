"""Expert weights in host memory: the storage tier (the bundle's files, memory-mapped)
and the RAM tier (an LRU of loaded experts under a byte budget).

The weight layout (names, shapes, offsets) is read once from an expert graph's external
data entries; every expert of a bundle shares it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from ... import naming
from ...errors import BudgetError, BundleError
from ...manifest import Manifest
from ...manifest_checks import EXPERT_BITS
from ..routing import Key
from .quant import ExpertLayout

WEIGHTS = ("w_gate", "w_up", "w_down")


@dataclass(frozen=True)
class TensorSlice:
    name: str
    shape: tuple[int, ...]
    offset: int
    length: int
    dtype: type = np.float32


def expert_layout(graph: Path, data_size: int, names: tuple[str, ...] = WEIGHTS,
                  dtypes: Optional[tuple[type, ...]] = None) -> tuple[TensorSlice, ...]:
    """Names, shapes and byte ranges of an expert's weights in its external-data file:
    ``names`` (fp32 w_gate, w_up, w_down; or the arrays of a quantized layout, of ``dtypes``)."""
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, onnx's own errors
        raise BundleError(f"cannot parse expert graph {graph} ({type(exc).__name__}); the file is corrupt: "
                          "check the bundle with spac-export inspect --verify and re-export it") from None
    slices = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            try:
                slices[init.name] = (tuple(init.dims), int(info.get("offset", 0)), int(info["length"]))
            except (KeyError, ValueError):
                raise BundleError(f"expert graph {graph} has no valid offset/length for {init.name}; the graph is "
                                  "corrupt, re-export the bundle") from None
    missing = [w for w in names if w not in slices]
    if missing:
        raise BundleError(f"expert graph {graph} lacks external weights {missing}; re-export the bundle")
    out = tuple(TensorSlice(w, *slices[w], dt) for w, dt in zip(names, dtypes or (np.float32,) * len(names)))
    for s in out:
        size = np.dtype(s.dtype).itemsize * int(np.prod(s.shape, dtype=np.int64))
        if s.offset < 0 or s.offset + s.length > data_size or s.length != size:
            raise BundleError(f"expert graph {graph} places weight {s.name} {list(s.shape)} at bytes "
                              f"{s.offset}..{s.offset + s.length} of a {data_size}-byte file; the graph is corrupt, "
                              "re-export the bundle")
    return out


@dataclass
class StoreCounters:
    storage_reads: int = 0
    storage_bytes: int = 0
    ram_hits: int = 0


class ExpertStore:
    """get(layer, expert) -> (w_gate [H, I], w_up [H, I], w_down [I, H]) float32 arrays; for
    a bundle of quantized experts, the arrays of its `quant.ExpertLayout` (``bits``).

    ``ram_budget`` None keeps every expert it has read; otherwise the least recently used
    are dropped beyond the budget and read again from storage when needed.
    """

    def __init__(self, bundle: Path, manifest: Manifest, ram_budget: Optional[int] = None):
        self.bundle, self.m = bundle, manifest
        first = manifest.moe_layers()[0]
        d = manifest.dims
        self.bits = EXPERT_BITS[manifest.experts.precision]
        stored = ExpertLayout(d.hidden_size, d.expert_intermediate, self.bits)
        names, dtypes = (WEIGHTS, None) if self.bits is None else (stored.names, tuple(dt for _, dt in stored.shapes))
        self.layout = expert_layout(bundle / manifest.expert_graph(first, 0), manifest.experts.data_size, names, dtypes)
        self.expert_bytes = sum(s.length for s in self.layout)
        want = (((d.hidden_size, d.expert_intermediate),) * 2 + ((d.expert_intermediate, d.hidden_size),)
                if self.bits is None else tuple(sh for sh, _ in stored.shapes))
        if tuple(s.shape for s in self.layout) != want:
            raise BundleError(f"expert weights have shapes {[list(s.shape) for s in self.layout]}, the manifest's "
                              f"dims say {[list(w) for w in want]}; the bundle is inconsistent, re-export it")
        self.ram_budget = ram_budget
        if ram_budget is not None:
            need = manifest.dims.top_k * self.expert_bytes
            if ram_budget < need:
                raise BudgetError(f"RAM budget {ram_budget} B holds {ram_budget // self.expert_bytes} experts, but one "
                                  f"layer needs up to {manifest.dims.top_k} (top-k) of {self.expert_bytes} B; "
                                  f"use --ram-budget of at least {need} B")
        self._ram: "OrderedDict[Key, tuple[np.ndarray, ...]]" = OrderedDict()
        self._lock = threading.Lock()
        self.counters = StoreCounters()

    def _read(self, key: Key) -> tuple[np.ndarray, ...]:
        """One read of the expert's weight file (about 4x faster than a memory map per file)."""
        path = self.bundle / naming.data_path(self.m.expert_graph(*key))
        with open(path, "rb") as f:
            raw = f.read()
        if len(raw) != self.m.experts.data_size:
            raise BundleError(f"bundle file {path} has {len(raw)} bytes, the manifest says "
                              f"{self.m.experts.data_size}; the file changed, re-export the bundle")
        return tuple(np.frombuffer(raw, dtype=s.dtype, count=s.length // np.dtype(s.dtype).itemsize,
                                   offset=s.offset).reshape(s.shape) for s in self.layout)

    def read(self, layer: int, expert: int) -> tuple[np.ndarray, ...]:
        """The expert's weights from storage, not kept (for a caller that keeps its own copy)."""
        arrays = self._read((layer, expert))
        with self._lock:
            self.counters.storage_reads += 1
            self.counters.storage_bytes += self.expert_bytes
        return arrays

    def get(self, layer: int, expert: int) -> tuple[np.ndarray, ...]:
        key = (layer, expert)
        with self._lock:
            hit = self._ram.get(key)
            if hit is not None:
                self._ram.move_to_end(key)
                self.counters.ram_hits += 1
                return hit
        arrays = self._read(key)
        with self._lock:
            self.counters.storage_reads += 1
            self.counters.storage_bytes += self.expert_bytes
            self._ram[key] = arrays
            if self.ram_budget is not None:
                while len(self._ram) * self.expert_bytes > self.ram_budget:
                    self._ram.popitem(last=False)
        return arrays

    def resident_bytes(self) -> int:
        with self._lock:
            return len(self._ram) * self.expert_bytes
