"""Measure a `DeviceProfile` for a bundle on this machine: the time of a lane call of one
expert against tokens on the fast tier and on the CPU, and the host-to-fast-tier copy bandwidth."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..manifest import load_manifest
from ..profile import DeviceProfile
from .tiers.pinned import PinnedCopier
from .tiers.pools import ExpertStack, SlotPool, interleaved
from .sessions import CPU
from .tiers.store import ExpertStore


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pinned_copy(copier: PinnedCopier, w: np.ndarray) -> np.ndarray:
    out = copier.pinned(w.shape)
    out[...] = w
    return out


def _line(tokens: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares fixed + per-token cost, both at least 0."""
    slope, intercept = np.polyfit(np.asarray(tokens, float), np.asarray(seconds, float), 1)
    return max(float(intercept), 0.0), max(float(slope), 0.0)


def calibrate(bundle: Path, fast_providers: Sequence[str] = (CPU,), repeats: int = 50,
              tokens: Sequence[int] = (1, 2, 4, 8, 16)) -> DeviceProfile:
    m = load_manifest(bundle)
    d = m.dims
    store = ExpertStore(bundle, m)
    layer = m.moe_layers()[0]
    weights = interleaved(*store.get(layer, 0))
    copier = PinnedCopier.create() if fast_providers[0] != CPU else None     # as the tiered engine copies
    if copier is not None:
        weights = tuple(_pinned_copy(copier, w) for w in weights)
    fast = SlotPool(1, d.hidden_size, d.expert_intermediate, 1, fast_providers, copier=copier)
    host = ExpertStack(1, d.hidden_size, d.expert_intermediate, 1)
    fast.load(0, weights)
    host.write(0, *weights)
    rng = np.random.default_rng(0)
    fast_t, slow_t = [], []
    for t in tokens:
        x = rng.standard_normal((1, t, d.hidden_size)).astype(np.float32)
        index, w = np.zeros((t, 1), np.int64), np.ones((t, 1), np.float32)
        fast.run(x, index, w)
        host.run(x, index, w)                                  # warm up
        fast_t.append(_median_time(lambda: fast.run(x, index, w), repeats))
        slow_t.append(_median_time(lambda: host.run(x, index, w), repeats))
    copy = _median_time(lambda: fast.load(0, weights), repeats)
    nbytes = sum(w.nbytes for w in weights)
    ff, fp = _line(tokens, fast_t)
    sf, sp = _line(tokens, slow_t)
    name = f"{'cpu stand-in' if fast.stand_in else fast_providers[0]} / cpu, measured"
    return DeviceProfile(name, ff, fp, sf, sp, 0.0, nbytes / copy if copy > 0 else float("inf"))
