"""Counters of the tiered backend, updated from the decode thread and the prefetch
worker under one lock; `mark` snapshots them (the owner adds the slot table's evictions
and the store's bytes read from the bundle's files),
`summary` reports one run between two marks, `delta` one step.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

# the per-step trace's fields: name in the trace -> counter
STEP_FIELDS = {"pairs": "pairs", "pairs_hit": "pairs_hit", "pairs_fast": "pairs_fast",
               "fetches_on_demand": "fetch_sync", "fetches_prefetch": "prefetched", "evictions": "evictions",
               "bytes_to_fast": "bytes_copied"}


@dataclass
class TierCounters:
    pairs: int = 0                 # (token, expert) pairs routed
    pairs_hit: int = 0             # ... whose expert was resident on the fast tier
    pairs_fast: int = 0            # ... computed on the fast tier
    fetch_sync: int = 0            # on-demand fetches (in the critical path)
    fetch_fallback: int = 0        # chosen for fast, no slot free: ran on CPU
    prefetched: int = 0            # copies made by the prefetch worker
    bytes_copied: int = 0          # host -> fast tier
    balancer_paths: dict[str, int] = field(default_factory=dict)
    balancer_seconds: list[float] = field(default_factory=list)
    queue_delay_s: list[float] = field(default_factory=list)
    layer_seconds: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)

    def mark(self) -> dict[str, Any]:
        """A snapshot of the lifetime counters."""
        with self.lock:
            snap = {k: v for k, v in vars(self).items() if isinstance(v, int)}
            snap.update(paths=dict(self.balancer_paths), n_balancer=len(self.balancer_seconds),
                        n_delay=len(self.queue_delay_s), layer_seconds=dict(self.layer_seconds))
        return snap

    @staticmethod
    def delta(previous: dict[str, Any], now: dict[str, Any]) -> dict[str, int]:
        """The trace's per-step counters between two marks."""
        return {name: now[c] - previous.get(c, 0) for name, c in STEP_FIELDS.items()}

    def summary(self, since: dict[str, Any], now: dict[str, Any], new_tokens: int) -> dict[str, Any]:
        """Rates and totals of one run: everything counted between two marks."""
        d = {k: now[k] - since.get(k, 0) for k, v in now.items() if isinstance(v, int)}
        pairs = d["pairs"]
        paths = {k: v - since["paths"].get(k, 0) for k, v in now["paths"].items() if v - since["paths"].get(k, 0)}
        with self.lock:
            balancer = self.balancer_seconds[since["n_balancer"]:]
            delays = self.queue_delay_s[since["n_delay"]:]
        return {
            "hit_rate": d["pairs_hit"] / pairs if pairs else 0.0,
            "fast_share": d["pairs_fast"] / pairs if pairs else 0.0,
            "fetches_on_demand": d["fetch_sync"],
            "fetches_prefetch": d["prefetched"],
            "fetch_fallbacks": d["fetch_fallback"],
            "evictions": d["evictions"],
            "bytes_to_fast": d["bytes_copied"],
            "bytes_to_fast_per_token": d["bytes_copied"] / new_tokens if new_tokens else 0.0,
            "storage_bytes": d["storage_bytes"],
            "balancer_paths": paths,
            "balancer_median_us": statistics.median(balancer) * 1e6 if balancer else 0.0,
            "prefetch_queue_delay_ms": statistics.median(delays) * 1e3 if delays else 0.0,
            "layer_seconds": {str(k): v - since["layer_seconds"].get(k, 0.0)
                              for k, v in sorted(now["layer_seconds"].items())},
        }

    def record_layer(self, layer: int, seconds: float, path: Optional[str], solve_seconds: float) -> None:
        with self.lock:
            self.layer_seconds[layer] = self.layer_seconds.get(layer, 0.0) + seconds
            if path is not None:
                self.balancer_paths[path] = self.balancer_paths.get(path, 0) + 1
                if path not in TRIVIAL_PATHS:
                    self.balancer_seconds.append(solve_seconds)


TRIVIAL_PATHS = ("all-fast", "all-slow", "static", "on-demand", "threshold")
