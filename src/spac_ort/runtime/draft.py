"""The dense draft model: one ONNX decoder graph with a KV cache.

IO convention (optimum's ``text-generation-with-past`` export): inputs ``input_ids``,
``attention_mask``, ``position_ids``, ``past_key_values.N.key/value`` [1, KV, P, D];
outputs ``logits`` [1, T, V], ``present.N.key/value`` [1, KV, P+T, D].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import naming
from ..errors import BundleError
from .kv import KVCache
from .sampling import check_finite
from .sessions import CPU, Piece

_PAST = re.compile(r"past_key_values\.(\d+)\.key")


@dataclass(frozen=True)
class DraftShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int


def find_graph(directory: Path) -> Path:
    """The decoder graph of an optimum export directory (``model.onnx`` or the only graph)."""
    if not directory.is_dir():
        raise BundleError(f"draft directory {directory} does not exist; pass an optimum ONNX export directory")
    if (directory / "model.onnx").is_file():
        return directory / "model.onnx"
    graphs = sorted(directory.glob("*.onnx"))
    if len(graphs) != 1:
        raise BundleError(f"draft directory {directory} has {len(graphs)} .onnx graphs; expected model.onnx from "
                          "optimum-cli export onnx --task text-generation-with-past")
    return graphs[0]


class DraftModel:
    def __init__(self, graph: Path, providers: Sequence[str] = (CPU,)):
        self.piece = Piece(graph, providers)
        self.shape = self._read_shape(graph)
        n = self.shape.num_layers
        self._past = [naming.draft_past(i, w) for i in range(n) for w in ("key", "value")]
        expected = {naming.INPUT_IDS, naming.DRAFT_ATTENTION_MASK, naming.POSITION_IDS, *self._past}
        if set(self.piece.inputs) != expected:
            raise BundleError(f"draft graph {graph} does not have the text-generation-with-past inputs "
                              f"(got {', '.join(self.piece.inputs)}); re-export it with optimum")
        self._order = {name: i for i, name in enumerate(self.piece.outputs)}

    def _read_shape(self, graph: Path) -> DraftShape:
        layers, kv, d = 0, None, None
        for inp in self.piece.session.get_inputs():
            m = _PAST.fullmatch(inp.name)
            if m:
                layers = max(layers, int(m[1]) + 1)
                kv, d = inp.shape[1], inp.shape[3]
        logits = [o for o in self.piece.session.get_outputs() if o.name == naming.LOGITS]
        if not layers or not isinstance(kv, int) or not isinstance(d, int) or not logits:
            raise BundleError(f"draft graph {graph} has no static past_key_values.N.key [B, KV, P, D] inputs "
                              "or no logits output; export it with optimum's text-generation-with-past task")
        vocab = logits[0].shape[-1]
        return DraftShape(layers, kv, d, vocab if isinstance(vocab, int) else -1)

    def new_cache(self) -> KVCache:
        return KVCache(self.shape.num_layers, self.shape.num_kv_heads, self.shape.head_dim)

    def forward(self, ids: Sequence[int], cache: KVCache) -> np.ndarray:
        """Feed T tokens after the cache; returns logits of the last one, [V]."""
        t, p = len(ids), cache.length
        inputs = {
            naming.INPUT_IDS: np.asarray(ids, dtype=np.int64).reshape(1, t),
            naming.DRAFT_ATTENTION_MASK: np.ones((1, p + t), dtype=np.int64),
            naming.POSITION_IDS: np.arange(p, p + t, dtype=np.int64).reshape(1, t),
        }
        for i in range(self.shape.num_layers):
            inputs[naming.draft_past(i, "key")] = cache.keys[i]
            inputs[naming.draft_past(i, "value")] = cache.values[i]
        outs = self.piece(*[inputs[n] for n in self.piece.inputs])
        for i in range(self.shape.num_layers):
            cache.update(i, outs[self._order[naming.draft_present(i, "key")]],
                         outs[self._order[naming.draft_present(i, "value")]])
        logits = outs[self._order[naming.LOGITS]][0, -1]                         # [V]
        check_finite(logits, "draft model", p + t)
        return logits
