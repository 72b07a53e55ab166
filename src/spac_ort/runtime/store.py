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

from .. import naming
from ..errors import BudgetError, BundleError
from ..manifest import Manifest

WEIGHTS = ("w_gate", "w_up", "w_down")
Key = tuple[int, int]


@dataclass(frozen=True)
class TensorSlice:
    name: str
    shape: tuple[int, ...]
    offset: int
    length: int


def expert_layout(graph: Path) -> tuple[TensorSlice, ...]:
    model = onnx.load(str(graph), load_external_data=False)
    slices = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            slices[init.name] = TensorSlice(init.name, tuple(init.dims), int(info.get("offset", 0)),
                                            int(info["length"]))
    missing = [w for w in WEIGHTS if w not in slices]
    if missing:
        raise BundleError(f"expert graph {graph} lacks external weights {missing}; re-export the bundle")
    return tuple(slices[w] for w in WEIGHTS)


@dataclass
class StoreCounters:
    storage_reads: int = 0
    storage_bytes: int = 0
    ram_hits: int = 0


class ExpertStore:
    """get(layer, expert) -> (w_gate [H, I], w_up [H, I], w_down [I, H]) float32 arrays.

    ``ram_budget`` None keeps every expert it has read; otherwise the least recently used
    are dropped beyond the budget and read again from storage when needed.
    """

    def __init__(self, bundle: Path, manifest: Manifest, ram_budget: Optional[int] = None):
        self.bundle, self.m = bundle, manifest
        first = manifest.moe_layers()[0]
        self.layout = expert_layout(bundle / manifest.expert_graph(first, 0))
        self.expert_bytes = sum(s.length for s in self.layout)
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
        path = self.bundle / naming.data_path(self.m.expert_graph(*key))
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        out = tuple(np.frombuffer(mm[s.offset:s.offset + s.length].tobytes(), dtype=np.float32).reshape(s.shape)
                    for s in self.layout)
        del mm
        return out

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
