"""Measure a `DeviceProfile` for a bundle on this machine: what an expert adds to a lane
call against tokens, on the fast tier and on the CPU, and the host-to-fast-tier copy
bandwidth."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..manifest import load_manifest
from ..profile import DeviceProfile
from .tiers.pinned import PinnedCopier
from .tiers.pools import ExpertStack, SlotPool, interleaved
from .tiers.quant import SAME, ExpertLayout, fast_bits
from .sessions import CPU, session_threads
from .tiers.store import ExpertStore


_CAL_EXPERTS = 4      # experts in the wide calibration call
# Calls rotate over entries holding at least this many bytes (or every expert of a layer,
# if fewer), so that each reads its weights from memory as decoding does, not from a cache
# that a few repeated experts fit in: with 4 real-size experts (76 MB) repeated, a server's
# cache made the CPU lane look 2-3x cheaper per expert than it ran in a replay.
_COLD_BYTES = 1 << 29


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn``, after one unmeasured call."""
    fn()                                        # warm up
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
              tokens: Sequence[int] = (1, 2, 4, 8, 16), fast_quant: Optional[str] = None) -> DeviceProfile:
    """A lane runs all its experts in one call, so what the balancer weighs is the cost an
    expert adds to its lane's call: per lane and token count, the time of a call over
    ``n`` experts minus a call over one, divided by n - 1, fitted as fixed + per token.
    ``fast_quant``: the slots' precision where it is not the bundle's (`TierConfig.fast_quant`)."""
    m = load_manifest(bundle)
    d = m.dims
    store = ExpertStore(bundle, m)
    bits = store.bits                           # a bundle of integer experts: its stacks' precision
    weights = store.get(m.moe_layers()[0], 0)
    weights = weights if bits is not None else interleaved(*weights)
    asked = fast_bits(fast_quant)
    slot_bits = bits if asked == SAME or bits is not None else asked
    fast_weights = ExpertLayout(d.hidden_size, d.expert_intermediate, slot_bits).encode(*weights) \
        if slot_bits != bits else weights
    copier = PinnedCopier.create() if fast_providers[0] != CPU else None     # as the tiered engine copies
    if copier is not None:
        weights, fast_weights = (tuple(_pinned_copy(copier, w) for w in ws) for ws in (weights, fast_weights))
    n = min(_CAL_EXPERTS, d.num_experts)
    nbytes = sum(w.nbytes for w in fast_weights)
    pool = min(d.num_experts, max(n, -(-_COLD_BYTES // sum(w.nbytes for w in weights))))
    fast = SlotPool(pool, d.hidden_size, d.expert_intermediate, fast_providers, copier=copier, bits=slot_bits)
    host = ExpertStack(pool, d.hidden_size, d.expert_intermediate, bits=bits)
    for i in range(pool):                       # copies of one expert: each entry is its own memory
        fast.load(i, fast_weights)
        host.write_raw(i, weights)
    rng = np.random.default_rng(0)
    fast_t, slow_t = [], []
    for t in tokens:
        x = rng.standard_normal((1, t, d.hidden_size)).astype(np.float32)
        for lane, out in ((fast, fast_t), (host, slow_t)):
            calls = [median_time(_rotating(lane, x, width, pool), repeats) for width in (1, n)]
            out.append(max(calls[1] - calls[0], 0.0) / max(n - 1, 1))
    copy = median_time(lambda: fast.load(0, fast_weights), repeats)
    ff, fp = _line(tokens, fast_t)
    sf, sp = _line(tokens, slow_t)
    name = f"{'cpu stand-in' if fast.stand_in else fast_providers[0]} / cpu, measured"
    return DeviceProfile(name, ff, fp, sf, sp, 0.0, nbytes / copy if copy > 0 else float("inf"))


def _rotating(lane: ExpertStack, x: np.ndarray, width: int, pool: int):  # type: ignore[no-untyped-def]
    """A lane call over ``width`` entries per token, the next ``width`` of the ``pool``
    entries at every call."""
    t = x.shape[1]
    start = [0]

    def call() -> None:
        index = np.tile((start[0] + np.arange(width)) % pool, (t, 1))
        start[0] += width
        lane.run(x, index, np.ones(index.shape, np.float32))

    return call


def calibrate_for_run(bundle: Path, fast_providers: Sequence[str], threads: int = 1,
                      link_bytes_per_s: Optional[float] = None, repeats: int = 10,
                      fast_quant: Optional[str] = None) -> DeviceProfile:
    """`calibrate` with the intra-op threads of the run the profile serves; with an emulated
    link (``link_bytes_per_s``) the balancer plans with that rate where it is the slower."""
    with session_threads(threads):
        profile = calibrate(bundle, fast_providers, repeats=repeats, fast_quant=fast_quant)
    if link_bytes_per_s is None:
        return profile
    return dataclasses.replace(profile, name=f"{profile.name}, link emulated at {link_bytes_per_s / 1e9:g} GB/s",
                               link_bytes_per_s=min(profile.link_bytes_per_s, link_bytes_per_s))
