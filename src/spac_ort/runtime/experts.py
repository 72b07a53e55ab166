"""Expert execution backends behind one small interface.

A backend runs one MoE layer's routed experts for a group of tokens and returns the
weighted sum. The first backend holds one ORT session per expert with constant weights.
Grouped execution (several experts per ORT call) plugs in behind the same interface.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from ..manifest import Manifest
from .routing import ExpertGroup
from .sessions import CPU, Piece

log = logging.getLogger(__name__)


class ExpertBackend(Protocol):
    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup]) -> np.ndarray:
        """x: [1, T, H]; returns [1, T, H] = sum over groups of weight * expert(x[rows])."""
        ...

    def calls(self) -> int:
        """ORT calls made so far."""
        ...


class SessionPerExpert:
    """All experts resident, one constant-weight session each."""

    def __init__(self, bundle: Path, manifest: Manifest, providers: Sequence[str] = (CPU,),
                 progress: Optional[Callable[[int, int], None]] = None):
        layers = manifest.moe_layers()
        total = len(layers) * manifest.dims.num_experts
        self._pieces: dict[tuple[int, int], Piece] = {}
        done = 0
        for layer in layers:
            for e in range(manifest.dims.num_experts):
                self._pieces[(layer, e)] = Piece(bundle / manifest.expert_graph(layer, e), providers)
                done += 1
                if progress:
                    progress(done, total)
        self._calls = 0

    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup]) -> np.ndarray:
        out = np.zeros_like(x)                                           # [1, T, H]
        t = x.shape[1]
        for g in groups:
            xs = x if (t == 1 or g.rows.size == t and (g.rows == np.arange(t)).all()) else x[:, g.rows]
            (y,) = self._pieces[(layer, g.expert)](np.ascontiguousarray(xs))   # [1, n, H]
            out[:, g.rows] += y * g.weights[None, :, None]
        self._calls += len(groups)
        return out

    def calls(self) -> int:
        return self._calls
