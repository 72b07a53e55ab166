"""The expert-demand sensor: what each target pass reveals about expert use.

After every target pass (prefill, plain decode step, or verification of a speculative
window) the generator hands a `StepRecord` to its step observers: per MoE layer, how many
of the pass's T tokens chose each expert (``counts [L, E]``, zero rows for dense layers)
and the router's top-k ids and weights. The utility estimator plugs in here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional, Protocol

import numpy as np

from .routing import expert_counts


@dataclass(frozen=True)
class StepRecord:
    step: int
    kind: str                          # "prefill" | "decode" | "verify"
    tokens: int                        # T: tokens in this target pass
    proposed: tuple[int, ...]          # draft tokens verified in this pass (empty unless verify)
    accepted: int                      # how many of them were accepted
    emitted: tuple[int, ...]           # tokens committed by this pass
    counts: np.ndarray                 # [L, E] tokens routed to each expert
    topk_ids: dict[int, np.ndarray]    # layer -> [T, A]
    topk_weights: dict[int, np.ndarray]
    tiers: Optional[dict] = None       # tier counters of this pass (hits, fetches, bytes), if tiered
    draft_seconds: float = 0.0         # the draft's share of this step (0 for prefill and plain passes)


class StepObserver(Protocol):
    def on_step(self, record: StepRecord) -> None: ...


class RoutingRecorder:
    """Backbone routing observer that keeps the current pass's router outputs."""

    def __init__(self, num_layers: int, num_experts: int):
        self.shape = (num_layers, num_experts)
        self.reset()

    def reset(self) -> None:
        self.counts = np.zeros(self.shape, dtype=np.int64)
        self.ids: dict[int, np.ndarray] = {}
        self.weights: dict[int, np.ndarray] = {}

    def __call__(self, layer: int, ids: np.ndarray, weights: np.ndarray) -> None:
        self.counts[layer] = expert_counts(ids, self.shape[1])
        self.ids[layer], self.weights[layer] = ids, weights


class TraceWriter:
    """Writes one JSON line per target pass: tokens, acceptance, per-layer expert counts
    (sparse: the ids of the experts used and their counts), so runs can be replayed."""

    def __init__(self, path: Path):
        self.path = path
        self._f: Optional[IO[str]] = open(path, "w", encoding="utf-8")

    def on_step(self, r: StepRecord) -> None:
        if self._f is None:
            raise ValueError(f"trace {self.path} is closed")
        layers = []
        for row in r.counts:
            used = np.flatnonzero(row)
            layers.append({"experts": used.tolist(), "counts": row[used].tolist()})
        self._f.write(json.dumps({"step": r.step, "kind": r.kind, "tokens": r.tokens,
                                  "proposed": list(r.proposed), "accepted": r.accepted,
                                  "emitted": list(r.emitted), "layers": layers,
                                  **({"tiers": r.tiers} if r.tiers is not None else {})}) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_trace(path: Path, num_experts: int) -> list[dict]:
    """Load a trace back; each record gains ``counts`` as an [L, E] array."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        counts = np.zeros((len(rec["layers"]), num_experts), dtype=np.int64)
        for i, layer in enumerate(rec["layers"]):
            counts[i, layer["experts"]] = layer["counts"]
        rec["counts"] = counts
        out.append(rec)
    return out
