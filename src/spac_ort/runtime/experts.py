"""Expert execution backends behind one small interface.

A backend runs one MoE layer's routed experts for a group of tokens and returns the
weighted sum. `SessionPerExpert` holds one ORT session per expert with constant weights
(one call per active expert); `GroupedExperts` runs all of a layer's routed experts in
one call over stacked weights (standard operators); `MoEExperts` in one
``com.microsoft.MoE`` call; `tiers.tiered.TieredExperts` places experts on tiers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from ..manifest import Manifest
from .graphs import grouped_swiglu_graph, moe_graph
from .routing import ExpertGroup, combine
from .sessions import CPU, Piece, ort, session_options
from .tiers.pools import fillers, interleaved, run_lane
from .tiers.store import ExpertStore

log = logging.getLogger(__name__)


class ExpertBackend(Protocol):
    needs_groups: bool      # run_layer reads ``groups``; else they are not computed

    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """x: [1, T, H]; returns [1, T, H] = sum over groups of weight * expert(x[rows]).
        ``ids``/``weights`` are the router's [T, A] outputs the groups were made from."""
        ...

    def calls(self) -> int:
        """ORT calls made so far."""
        ...

    def mark(self) -> Any:
        """A snapshot of the backend's counters (None: it keeps none)."""
        ...

    def summary(self, new_tokens: int, since: Any = None) -> Optional[dict]:
        """The counters since ``since`` (a `mark`) for the run report, or None."""
        ...

    def step_counters(self) -> Optional[dict]:
        """The counters of the last target pass for the trace, or None."""
        ...

    def close(self) -> None: ...


class ResidentBackend:
    """What backends without tiers share: no counters, nothing to release."""

    needs_groups = False     # run_layer reads ``groups`` (else only ids and weights)

    def mark(self) -> Any:
        return None

    def summary(self, new_tokens: int, since: Any = None) -> Optional[dict]:
        return None

    def step_counters(self) -> Optional[dict]:
        return None

    def close(self) -> None:
        pass


class SessionPerExpert(ResidentBackend):
    """All experts resident, one constant-weight session each."""

    needs_groups = True

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

    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        t = x.shape[1]
        outputs = {}
        for g in groups:
            xs = x if (t == 1 or g.rows.size == t and (g.rows == np.arange(t)).all()) else x[:, g.rows]
            (outputs[g.expert],) = self._pieces[(layer, g.expert)](np.ascontiguousarray(xs))   # [1, n, H]
        self._calls += len(groups)
        return combine(groups, outputs, x)

    def calls(self) -> int:
        return self._calls


class GroupedExperts(ResidentBackend):
    """All experts resident in host memory; one ORT call runs a layer's routed experts
    for up to ``chunk`` tokens (weights stacked per layer, bound as graph inputs)."""

    def __init__(self, bundle: Path, manifest: Manifest, chunk: int = 64):
        d = manifest.dims
        store = ExpertStore(bundle, manifest)
        self.session = ort.InferenceSession(grouped_swiglu_graph(d.hidden_size, d.expert_intermediate, d.top_k),
                                            session_options(), providers=[CPU])
        self.weights: dict[int, list] = {}
        for layer in manifest.moe_layers():
            per_expert = [store.get(layer, e) for e in range(d.num_experts)]
            stacked = [np.ascontiguousarray(np.stack([w[i] for w in per_expert])) for i in range(3)]
            self.weights[layer] = [ort.OrtValue.ortvalue_from_numpy(w) for w in stacked]
        self.chunk = chunk
        self._calls = 0

    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        if ids is None or weights is None:
            raise ValueError("the grouped backend needs the router outputs (ids and weights)")
        order = np.argsort(ids, axis=1, kind="stable")                      # ascending expert id per token
        ids = np.ascontiguousarray(np.take_along_axis(ids, order, axis=1))
        weights = np.ascontiguousarray(np.take_along_axis(weights, order, axis=1).astype(np.float32))
        outs = []
        for start in range(0, x.shape[1], self.chunk):
            stop = start + self.chunk
            b = self.session.io_binding()
            b.bind_cpu_input("normed", np.ascontiguousarray(x[:, start:stop]))
            b.bind_cpu_input("expert_ids", ids[start:stop])
            b.bind_cpu_input("pair_weights", weights[start:stop])
            for name, value in zip(("w_gate", "w_up", "w_down"), self.weights[layer]):
                b.bind_ortvalue_input(name, value)
            b.bind_output("ffn_out")
            self.session.run_with_iobinding(b)
            outs.append(b.copy_outputs_to_cpu()[0])
            self._calls += 1
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def calls(self) -> int:
        return self._calls


class MoEExperts(ResidentBackend):
    """All experts resident in host memory; a layer's routed experts in one
    ``com.microsoft.MoE`` call that routes from the router's logits (fused graphs: the
    fused backbone binds it directly, `session` and `layer_weights`)."""

    def __init__(self, bundle: Path, manifest: Manifest, providers: Sequence[str] = (CPU,)):
        d = manifest.dims
        store = ExpertStore(bundle, manifest)
        self.session = ort.InferenceSession(moe_graph(d.hidden_size, d.expert_intermediate, d.num_experts, d.top_k,
                                                      manifest.routing.norm_topk_prob),
                                            session_options(), providers=list(providers))
        self._weights: dict[int, tuple] = {}
        for layer in manifest.moe_layers():
            pairs = [interleaved(*store.get(layer, e)) for e in range(d.num_experts)]
            self._weights[layer] = tuple(ort.OrtValue.ortvalue_from_numpy(np.stack([p[i] for p in pairs]))
                                         for i in range(2))
        self._calls = 0
        self._fillers = fillers(d.num_experts)

    def layer_weights(self, layer: int) -> tuple:
        """(w_gate_up [E, 2I, H], w_down [E, H, I]) of ``layer`` as OrtValues."""
        return self._weights[layer]

    def count(self, calls: int) -> None:
        self._calls += calls

    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """The numpy path (the fused backbone binds the session directly instead): one lane
        over all of the layer's experts (`tiers.pools.run_lane`)."""
        if ids is None or weights is None:
            raise ValueError("the MoE backend needs the router outputs (ids and weights)")
        self._calls += 1
        return run_lane(self.session, dict(zip(("w_gate_up", "w_down"), self._weights[layer])), x, ids, weights,
                        self._fillers)

    def calls(self) -> int:
        return self._calls


BACKENDS = ("auto", "moe", "grouped", "sessions")    # --experts choices: every expert resident


def resident_backend(name: str, bundle: Path, manifest: Manifest, providers: Sequence[str] = (CPU,),
                     progress: Optional[Callable[[int, int], None]] = None) -> ResidentBackend:
    """The backend ``name`` (one of `BACKENDS`) over every expert of the bundle. ``auto``:
    the MoE operator for bundles with fused graphs, grouped calls for portable ones."""
    from ..errors import ConfigError
    from ..naming import Graphs

    if name == "auto":
        name = "moe" if manifest.graphs is Graphs.FUSED else "grouped"
    if name == "moe":
        return MoEExperts(bundle, manifest, providers)
    if name == "grouped":
        return GroupedExperts(bundle, manifest)
    if name == "sessions":
        return SessionPerExpert(bundle, manifest, providers, progress)
    raise ConfigError(f"unknown expert backend '{name}'; use one of {', '.join(BACKENDS)}")
