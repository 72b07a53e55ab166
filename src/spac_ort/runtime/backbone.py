"""The target model's forward pass over T new tokens, stitched from bundle pieces.

    ids [T] -> embed -> for each layer:
                          attention (KV cache) -> hidden, normed
                          MoE layer:  router -> group tokens by expert -> experts -> sum
                                      (+ shared expert)
                          dense layer: dense MLP
                          hidden += ffn
               -> head -> logits

The same path serves prefill (T = prompt length), decoding (T = 1) and verification of
a speculative window (T = K + 1).
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from typing import Callable, Sequence

import numpy as np

from .. import naming
from ..errors import BundleError
from .sampling import check_finite
from ..manifest import LayerKind, Manifest
from ..naming import PieceKind
from .experts import ExpertBackend
from .kv import KVCache
from .routing import ExpertGroup, group_by_expert
from .providers import piece_providers
from .sessions import CPU, Piece
from .stats import PieceTimers

# Called once per MoE layer and pass with (layer, topk ids [T, A], topk weights [T, A]).
RoutingObserver = Callable[[int, np.ndarray, np.ndarray], None]


def open_piece(bundle: Path, manifest: Manifest, rel: str, kind: PieceKind, providers: Sequence[str]) -> Piece:
    """A session over a bundle graph whose inputs and outputs, in order, are the ones the
    manifest names for its kind (the backbones bind them by position or name)."""
    piece = Piece(bundle / manifest.session_graph(rel), piece_providers(providers, kind is PieceKind.ROUTER))
    io = manifest.io.get(kind.value)
    if io is None or (piece.inputs, piece.outputs) != (io.inputs, io.outputs):
        want = f"{list(io.inputs)} -> {list(io.outputs)}" if io else f"no '{kind.value}' entry in its io"
        raise BundleError(f"graph {rel} has {list(piece.inputs)} -> {list(piece.outputs)}, the manifest says {want}; "
                          "the graph does not belong to this bundle, re-export it")
    return piece


class BackboneState:
    """What every target backbone holds: the manifest, the expert backend, timers, routing
    observers, and ``greedy`` (set by the generator: only the argmax of the logits matters)."""

    def __init__(self, manifest: Manifest, experts: ExpertBackend):
        self.m = manifest
        self.experts = experts
        self.timers = PieceTimers()
        self.observers: list[RoutingObserver] = []
        self.greedy = False


class Backbone(BackboneState):
    def __init__(self, bundle: Path, manifest: Manifest, experts: ExpertBackend,
                 providers: Sequence[str] = (CPU,)):
        super().__init__(manifest, experts)      # greedy is unused here (the fused backbone screens)
        self._bundle, self._providers = bundle, providers
        self.embed = self._piece(naming.EMBED, PieceKind.EMBED)
        self.head = self._piece(naming.HEAD, PieceKind.HEAD)
        self.attention: list[Piece] = []
        self.router: dict[int, Piece] = {}
        self.shared: dict[int, Piece] = {}
        self.dense: dict[int, Piece] = {}
        for layer, kind in enumerate(manifest.layer_kinds):
            self.attention.append(self._layer_piece(PieceKind.ATTENTION, layer))
            if kind is LayerKind.MOE:
                self.router[layer] = self._layer_piece(PieceKind.ROUTER, layer)
                if manifest.dims.shared_expert_intermediate:
                    self.shared[layer] = self._layer_piece(PieceKind.SHARED_EXPERT, layer)
            else:
                self.dense[layer] = self._layer_piece(PieceKind.DENSE_MLP, layer)

    def _layer_piece(self, kind: PieceKind, layer: int) -> Piece:
        return self._piece(naming.layer_piece(kind, layer), kind)

    def _piece(self, rel: str, kind: PieceKind) -> Piece:
        return open_piece(self._bundle, self.m, rel, kind, self._providers)

    def new_cache(self) -> KVCache:
        d = self.m.dims
        return KVCache(d.num_layers, d.cache_heads, d.cache_key_dim, d.cache_value_dim)

    def forward(self, ids: Sequence[int], cache: KVCache, last_only: bool = True) -> np.ndarray:
        """Run T new tokens; returns logits [T, V] (or [1, V] with ``last_only``)."""
        add = self.timers.add
        t = len(ids)
        start = cache.length
        input_ids = np.asarray(ids, dtype=np.int64).reshape(1, t)                # [1, T]
        positions = np.arange(start, start + t, dtype=np.int64).reshape(1, t)   # [1, T]
        t0 = perf_counter()
        (hidden,) = self.embed(input_ids)                                        # [1, T, H]
        t1 = perf_counter()
        add("embed", t1 - t0)
        for layer, kind in enumerate(self.m.layer_kinds):
            hidden, normed, key, value = self.attention[layer](
                hidden, positions, cache.keys[layer], cache.values[layer])
            cache.update(layer, key, value)
            t2 = perf_counter()
            add("attention", t2 - t1)
            if kind is LayerKind.MOE:
                weights, topk = self.router[layer](normed)                       # [1, T, A] each
                t3 = perf_counter()
                add("router", t3 - t2)
                weights, topk = weights[0], topk[0]                              # [T, A]
                for observe in self.observers:
                    observe(layer, topk, weights)
                groups: list[ExpertGroup] = group_by_expert(topk, weights) if self.experts.needs_groups else []
                calls = self.experts.calls()
                t4 = perf_counter()
                ffn = self.experts.run_layer(layer, normed, groups, ids=topk, weights=weights)   # [1, T, H]
                t1 = perf_counter()
                add("experts", t1 - t4, self.experts.calls() - calls)
                if layer in self.shared:
                    (shared,) = self.shared[layer](normed)
                    ffn += shared
                    t5 = perf_counter()
                    add("shared_expert", t5 - t1)
                    t1 = t5
            else:
                (ffn,) = self.dense[layer](normed)
                t1 = perf_counter()
                add("dense_mlp", t1 - t2)
            hidden = hidden + ffn
        if last_only:
            hidden = np.ascontiguousarray(hidden[:, -1:])
        t1 = perf_counter()
        (logits,) = self.head(hidden)                                            # [1, T|1, V]
        add("head", perf_counter() - t1)
        check_finite(logits, "target model", start + t)
        return logits[0]
