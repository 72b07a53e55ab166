"""Expert placement policies as pure decisions, all on the same runtime and kernels
(fair comparisons).

| policy    | placement                                                   | speculation |
|-----------|-------------------------------------------------------------|-------------|
| resident  | every expert on the fast tier (the limit)                   | if a draft  |
| cpu       | every expert on the CPU                                     | if a draft  |
| static    | experts of the last N layers fast, the rest on the CPU      | off         |
|           | (llama.cpp --n-cpu-moe; N = most layers that fit)           |             |
| sd-static | static placement with speculative decoding                  | on          |
|           | (the paper's "llama.cpp with SD")                           |             |
| lru       | every active expert fast, misses fetched on demand into an  | off         |
|           | LRU cache (mixtral-offloading / MoE-Infinity style)         |             |
| spac      | utility estimator + workload balancer + async prefetch      | on          |

A policy is configuration only. It is given values and returns what it wants done:

    initial_residents(view)                  -> experts to load before the first pass
    assign(view, state, layer, demand, free) -> Assignment (fast / slow / fetch)
    observe(view, state, record)             -> Decision (next state, prefetch order, ranking)

The state is plain data owned by the caller; the tier mechanism (tiers/) applies the
decisions. Nothing here touches slots, threads or sessions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ...errors import ConfigError
from ...profile import DeviceProfile
from ..routing import Key
from ..sensor import StepRecord
from .balancer import Assignment, LayerDemand, balance
from .utility import UtilityConfig, UtilityState, prefetch_order, update

log = logging.getLogger(__name__)

POLICIES: dict[str, type["Policy"]] = {}


@dataclass(frozen=True)
class TierView:
    """What a policy may know of the model and the fast tier."""

    moe_layers: tuple[int, ...]
    num_layers: int
    num_experts: int
    top_k: int
    slots: int
    expert_bytes: int
    profile: DeviceProfile
    lanes_overlap: bool = True     # the fast and CPU lanes run at once (an accelerator); False: one after the other


@dataclass(frozen=True)
class Ranking:
    """A snapshot the slot table evicts by: the lowest ``rank`` goes first (ties: least
    recently used); a fetch of expert k may evict only occupants ranking below ``floor[k]``."""

    rank: np.ndarray            # [L, E]
    floor: np.ndarray           # [L, E]

    @classmethod
    def flat(cls, num_layers: int, num_experts: int) -> "Ranking":
        """Every expert equal: pure LRU, any occupant may go."""
        return cls(np.zeros((num_layers, num_experts)), np.full((num_layers, num_experts), np.inf))


@dataclass(frozen=True)
class Decision:
    state: Any
    prefetch: tuple[Key, ...]   # experts to bring to the fast tier, most wanted first
    ranking: Ranking


def register(name: str) -> Callable[[type["Policy"]], type["Policy"]]:
    def deco(cls: type["Policy"]) -> type["Policy"]:
        cls.name = name
        POLICIES[name] = cls
        return cls
    return deco


def _all(d: LayerDemand, fast: bool, path: str) -> Assignment:
    ids = tuple(int(e) for e in d.experts)
    fetch = tuple(int(e) for e, r in zip(d.experts, d.resident) if not r) if fast else ()
    return Assignment(ids if fast else (), () if fast else ids, fetch, 0.0, path, 0.0)


def _as_resident(d: LayerDemand, path: str) -> Assignment:
    fast = tuple(int(e) for e, r in zip(d.experts, d.resident) if r)
    slow = tuple(int(e) for e, r in zip(d.experts, d.resident) if not r)
    return Assignment(fast, slow, (), 0.0, path, 0.0)


class Policy:
    name = ""
    speculative: Optional[bool] = None      # None: whenever the bundle has a draft
    prefetches = False

    def min_slots(self, view: TierView) -> int:
        return 0

    def initial_state(self, view: TierView) -> Any:
        return None

    def initial_residents(self, view: TierView) -> list[Key]:
        return []

    def ranking(self, view: TierView, state: Any) -> Ranking:
        return Ranking.flat(view.num_layers, view.num_experts)

    def assign(self, view: TierView, state: Any, layer: int, d: LayerDemand, free_slots: int) -> Assignment:
        raise NotImplementedError

    def observe(self, view: TierView, state: Any, record: StepRecord) -> Decision:
        return Decision(state, (), self.ranking(view, state))


@register("resident")
class Resident(Policy):
    def min_slots(self, view):
        return len(view.moe_layers) * view.num_experts

    def initial_residents(self, view):
        return [(l, e) for l in view.moe_layers for e in range(view.num_experts)]

    def assign(self, view, state, layer, d, free_slots):
        return _all(d, True, "all-fast")


@register("cpu")
class Cpu(Policy):
    def assign(self, view, state, layer, d, free_slots):
        return _all(d, False, "all-slow")


@register("static")
class Static(Policy):
    speculative = False

    def initial_residents(self, view):
        layers = view.moe_layers
        n_fast = min(len(layers), view.slots // view.num_experts)
        if n_fast == 0 and view.slots:
            log.warning("policy '%s' places whole layers on the fast tier, and %d slots hold less than one layer's "
                        "%d experts: every expert runs on the CPU. Use --fast-budget of at least %d B (%.1f%%) or "
                        "another policy", self.name, view.slots, view.num_experts,
                        view.num_experts * view.expert_bytes, 100 / len(layers))
        return [(l, e) for l in layers[len(layers) - n_fast:] for e in range(view.num_experts)]

    def assign(self, view, state, layer, d, free_slots):
        return _as_resident(d, "static")


@register("sd-static")
class SdStatic(Static):
    speculative = True


class StaticTop(Policy):
    """A static most-used set: the experts with the highest usage counts of a calibration
    run fill the fast tier once (not in the CLI: it needs calibration counts)."""

    name = "static-top"
    speculative = True

    def __init__(self, usage: np.ndarray):
        self.usage = usage                      # [L, E] routed-token counts of a calibration run

    def initial_residents(self, view):
        keys = [(l, e) for l in view.moe_layers for e in range(view.num_experts)]
        keys.sort(key=lambda k: -self.usage[k])
        return keys[: view.slots]

    def assign(self, view, state, layer, d, free_slots):
        return _as_resident(d, "static")


@register("lru")
class Lru(Policy):
    speculative = False

    def min_slots(self, view):
        return view.top_k

    def assign(self, view, state, layer, d, free_slots):
        return _all(d, True, "on-demand")


@dataclass
class SpacOptions:
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    estimator: bool = True        # off: levels = experts used in the last window (no inertia)
    frequency_decay: float = 0.9  # tie-break within a level: decayed count of past windows (0: off)
    balancer: bool = True         # off: run fast iff resident, fetch when count >= fetch_threshold
    fetch_threshold: int = 2
    warm_start: bool = True       # seed the estimator from the prefill pass's routing
    evict_within_level: bool = False  # a copy may evict an expert of its own utility level (more copies,
                                      # measured: 3.4x the copies for +1 point of hit rate at 17%)
    solve_worth: float = 300e-6   # seconds an exact balance is worth (about what one costs here): a greedy
                                  # assignment within this of the lower bound is taken as it is


@dataclass(frozen=True)
class SpacState:
    utility: UtilityState
    frequency: np.ndarray         # [L, E] decayed routed-token counts


@register("spac")
class Spac(Policy):
    speculative = True
    prefetches = True

    def __init__(self, options: Optional[SpacOptions] = None):
        self.o = options or SpacOptions()

    def min_slots(self, view):
        return view.top_k

    def initial_state(self, view):
        shape = (view.num_layers, view.num_experts)
        return SpacState(UtilityState(np.zeros(shape, dtype=np.int64)), np.zeros(shape))

    def ranking(self, view, state):
        """Utility level; within a level, experts used more in past windows rank higher.
        A copy evicts only experts of a lower level (``evict_within_level``: also of its
        own level that rank lower), so prefetch and eviction never undo each other;
        unless copies pay for themselves (`copies_pay`): then any unpinned occupant,
        lowest rank first."""
        top = state.frequency.max(initial=0.0)
        levels = state.utility.levels
        rank = levels + (0.99 * state.frequency / top if top > 0 else 0.0)
        if copies_pay(view):             # a copy costs less than the CPU run it replaces: any occupant may go
            return Ranking(rank, np.full(rank.shape, np.inf))
        return Ranking(rank, levels + (1.0 if self.o.evict_within_level else 0.0))

    def assign(self, view, state, layer, d, free_slots):
        if self.o.balancer:
            return balance(d, view.profile, view.expert_bytes, free_slots, solve_worth=self.o.solve_worth,
                           parallel=view.lanes_overlap)
        hot = [r or n >= self.o.fetch_threshold for n, r in zip(d.tokens, d.resident)]
        fast = tuple(int(e) for e, h in zip(d.experts, hot) if h)
        fetch = tuple(int(e) for e, h, r in zip(d.experts, hot, d.resident) if h and not r)
        slow = tuple(int(e) for e, h in zip(d.experts, hot) if not h)
        return Assignment(fast, slow, fetch, 0.0, "threshold", 0.0)

    def observe(self, view, state, record):
        if record.kind == "prefill":
            if not self.o.warm_start:
                return Decision(state, (), self.ranking(view, state))
            state = warm_start(record.counts, self.o.utility.levels)
        else:
            decay = self.o.frequency_decay
            frequency = state.frequency * decay + record.counts if decay else state.frequency
            utility = (update(state.utility, record.counts, record.tokens, self.o.utility) if self.o.estimator
                       else UtilityState((record.counts > 0).astype(np.int64)))
            state = SpacState(utility, frequency)
        order = prefetch_order(state.utility.levels, state.frequency)
        return Decision(state, tuple(order), self.ranking(view, state))


def copies_pay(view: TierView) -> bool:
    """Whether copying an expert to the fast tier costs less than running it once on the
    CPU beside it (for one token). Then a fetch pays for itself at once, an evicted expert
    costs at most one more such copy, and the utility order decides only who goes first:
    the floor is lifted. Over a slower link (PCIe 4.0 against real-size experts) copies
    cost more than a CPU run, and only lower-utility occupants may be evicted."""
    p = view.profile
    return p.transfer(view.expert_bytes) < p.slow(1) - p.fast(1)


def warm_start(counts: np.ndarray, levels: int) -> SpacState:
    """The estimator's state after a prefill of T tokens with routing ``counts [L, E]``:
    every expert the prompt used gets a level, 1 .. U in proportion to its share of the
    layer's most used expert; the counts seed the frequency tie-break."""
    top = np.maximum(counts.max(axis=1, keepdims=True), 1)
    lv = np.where(counts > 0, np.ceil(levels * counts / top), 0).astype(np.int64)
    return SpacState(UtilityState(np.clip(lv, 0, levels)), counts.astype(np.float64))


def make_policy(name: str, spac: Optional[SpacOptions] = None) -> Policy:
    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown policy '{name}'; choose one of {', '.join(POLICIES)}")
    if cls is Spac:
        return Spac(spac)
    return cls()
