"""Replay a policy over recorded steps (`StepRecord`s, e.g. read from a ``--trace``
file) without ORT: a model of the fast tier's residency that follows the slot table's
rules (empty slot first, else the unpinned occupant of lowest rank, least recently used
among equals, below the fetch's floor) with synchronous prefetch. It answers "what hit
rate and how many copies would this policy give on this routing" in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..routing import Key
from ..sensor import StepRecord
from .balancer import LayerDemand
from .policies import Policy, Ranking, TierView
from .utility import deadline_order


@dataclass
class ReplayStats:
    pairs: int = 0
    pairs_hit: int = 0
    pairs_fast: int = 0
    fetches_on_demand: int = 0
    fetches_prefetch: int = 0
    evictions: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)   # per record: expert time by the view's profile
    step_lanes: list[int] = field(default_factory=list)        # per record: lane calls (a layer's non-empty lanes)

    @property
    def hit_rate(self) -> float:
        return self.pairs_hit / self.pairs if self.pairs else 0.0


class _Tier:
    """Residency only: expert -> last use, at most ``slots`` of them."""

    def __init__(self, slots: int):
        self.slots, self.last_use, self.clock, self.evictions = slots, {}, 0, 0

    def touch(self, keys: Iterable[Key]) -> None:
        self.clock += 1
        for k in keys:
            self.last_use[k] = self.clock

    def claim(self, key: Key, ranking: Ranking, floor: float, busy: set) -> bool:
        """Make room for ``key`` and take it in; False when it is there already or no
        occupant may go."""
        if key in self.last_use:
            return False
        if len(self.last_use) >= self.slots:
            candidates = [(float(ranking.rank[k]), t, k) for k, t in self.last_use.items()
                          if k not in busy and float(ranking.rank[k]) < floor]
            if not candidates:
                return False
            del self.last_use[min(candidates)[2]]
            self.evictions += 1
        self.clock += 1
        self.last_use[key] = self.clock
        return True


def replay(policy: Policy, view: TierView, records: Iterable[StepRecord]) -> ReplayStats:
    """``view.lanes_overlap``: the two lanes of a layer run at the same time (an
    accelerator beside the CPU), else one after the other, with prefetch copies inline
    after each pass (a CPU stand-in); `ReplayStats.step_seconds` charges them so."""
    state: Any = policy.initial_state(view)
    ranking = policy.ranking(view, state)
    tier, stats = _Tier(view.slots), ReplayStats()
    for key in policy.initial_residents(view)[: view.slots]:
        tier.claim(key, ranking, np.inf, set())
    for record in records:
        seconds, lanes = 0.0, 0
        for layer in view.moe_layers:
            s, n = _layer(policy, view, state, ranking, tier, stats, layer, record.counts[layer])
            seconds, lanes = seconds + s, lanes + n
        prefetched = stats.fetches_prefetch
        decision = policy.observe(view, state, record)
        state, ranking = decision.state, decision.ranking
        # the tier's plan orders prefetches by deadline; layers are needed in their order
        prefetch = deadline_order(list(decision.prefetch), view.slots, {l: i for i, l in enumerate(view.moe_layers)})
        for key in prefetch if policy.prefetches and view.slots else ():
            if tier.claim(key, ranking, float(ranking.floor[key]), set()):
                stats.fetches_prefetch += 1
        if not view.lanes_overlap:
            seconds += (stats.fetches_prefetch - prefetched) * view.profile.transfer(view.expert_bytes)
        stats.step_seconds.append(seconds)
        stats.step_lanes.append(lanes)
    stats.evictions = tier.evictions
    return stats


def _layer(policy: Policy, view: TierView, state: Any, ranking: Ranking, tier: _Tier, stats: ReplayStats,
           layer: int, counts: np.ndarray) -> tuple[float, int]:
    """Place one layer's demand; returns its expert seconds by the profile and its lane calls."""
    experts = np.flatnonzero(counts)
    tokens = counts[experts]
    resident = np.array([(layer, int(e)) in tier.last_use for e in experts], dtype=bool)
    demand = LayerDemand(experts, tokens, resident, ranking.rank[layer, experts])
    a = policy.assign(view, state, layer, demand, view.slots)
    stats.paths[a.path] = stats.paths.get(a.path, 0) + 1
    fetch = set(a.fetch)
    pinned = {(layer, e) for e in a.fast if e not in fetch and (layer, e) in tier.last_use}
    tier.touch(pinned)
    fast = {k[1] for k in pinned}
    busy = set(pinned)
    for e in sorted(fetch):
        if view.slots and tier.claim((layer, e), ranking, float(ranking.floor[layer, e]), busy):
            busy.add((layer, e))
            fast.add(e)
            stats.fetches_on_demand += 1
    stats.pairs += int(tokens.sum())
    stats.pairs_hit += int(tokens[resident].sum())
    stats.pairs_fast += int(sum(n for e, n in zip(experts, tokens) if int(e) in fast))
    p = view.profile
    fetched = sum(1 for e in fetch if int(e) in fast)
    fast_s = sum(p.fast(int(n)) for e, n in zip(experts, tokens) if int(e) in fast) + fetched * p.transfer(
        view.expert_bytes)
    slow_s = sum(p.slow(int(n)) for e, n in zip(experts, tokens) if int(e) not in fast)
    lanes = int(bool(fast)) + int(len(fast) < len(experts))
    return (max(fast_s, slow_s) if view.lanes_overlap else fast_s + slow_s), lanes
