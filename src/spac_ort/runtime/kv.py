"""Per-layer KV cache of the target model: grows by concatenation, rolls back by slicing."""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, value_dim: int | None = None):
        self.keys = [np.zeros((1, num_kv_heads, 0, head_dim), dtype=np.float32)] * num_layers       # [1, KV, 0, D]
        self.values = [np.zeros((1, num_kv_heads, 0, value_dim or head_dim), dtype=np.float32)] * num_layers

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def update(self, layer: int, key: np.ndarray, value: np.ndarray) -> None:
        self.keys[layer], self.values[layer] = key, value

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (rollback after rejected draft tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.keys = [np.ascontiguousarray(k[:, :, :length]) for k in self.keys]
        self.values = [np.ascontiguousarray(v[:, :, :length]) for v in self.values]
