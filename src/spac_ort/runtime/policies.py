"""Expert placement policies, all on the same runtime and kernels (fair comparisons).

| policy    | placement                                                   | speculation |
|-----------|-------------------------------------------------------------|-------------|
| resident  | every expert on the fast tier (the limit)                   | if a draft  |
| cpu       | every expert on the CPU                                     | if a draft  |
| static    | experts of the first N layers on CPU, the rest fast         | off         |
|           | (llama.cpp --n-cpu-moe; N = fewest layers so the rest fits) |             |
| sd-static | static placement with speculative decoding                  | on          |
|           | (the paper's "llama.cpp with SD")                           |             |
| lru       | every active expert fast, misses fetched on demand into an  | off         |
|           | LRU cache (mixtral-offloading / MoE-Infinity style)         |             |
| spac      | utility estimator + workload balancer + async prefetch      | on          |

A policy decides per layer (`assign`) and after each target pass (`after_step`); the
engine owns the mechanism (slots, copies, threads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..manifest import Manifest
from ..profile import DeviceProfile
from .balancer import Assignment, LayerDemand, balance
from .cache import Key
from .sensor import StepRecord
from .utility import UtilityConfig, UtilityState, prefetch_order, update

if TYPE_CHECKING:
    from .engine import TieredExperts

POLICIES: dict[str, type["Policy"]] = {}


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


class Policy:
    name = ""
    speculative: Optional[bool] = None      # None: whenever the bundle has a draft
    prefetches = False

    def min_slots(self, m: Manifest) -> int:
        return 0

    def setup(self, engine: "TieredExperts") -> None:
        pass

    def rank(self, key: Key) -> float:
        """Eviction rank of a resident expert: lowest is evicted first (ties: LRU)."""
        return 0.0

    def evict_floor(self, key: Key) -> float:
        """An on-demand fetch of ``key`` may evict only occupants ranking below this."""
        return float("inf")

    def assign(self, layer: int, d: LayerDemand, engine: "TieredExperts") -> Assignment:
        raise NotImplementedError

    def after_step(self, record: StepRecord, engine: "TieredExperts") -> None:
        pass


@register("resident")
class Resident(Policy):
    def min_slots(self, m: Manifest) -> int:
        return len(m.moe_layers()) * m.dims.num_experts

    def setup(self, engine):
        engine.load_now([(l, e) for l in engine.manifest.moe_layers() for e in range(engine.manifest.dims.num_experts)])

    def assign(self, layer, d, engine):
        return _all(d, True, "all-fast")


@register("cpu")
class Cpu(Policy):
    def assign(self, layer, d, engine):
        return _all(d, False, "all-slow")


@register("static")
class Static(Policy):
    speculative = False

    def setup(self, engine):
        m = engine.manifest
        layers = m.moe_layers()
        n_fast = min(len(layers), engine.num_slots // m.dims.num_experts)
        self.cpu_layers = layers[: len(layers) - n_fast]
        engine.load_now([(l, e) for l in layers[len(layers) - n_fast:] for e in range(m.dims.num_experts)])

    def assign(self, layer, d, engine):
        fast = tuple(int(e) for e, r in zip(d.experts, d.resident) if r)
        slow = tuple(int(e) for e, r in zip(d.experts, d.resident) if not r)
        return Assignment(fast, slow, (), 0.0, "static", 0.0)


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

    def setup(self, engine):
        layers = engine.manifest.moe_layers()
        keys = [(l, e) for l in layers for e in range(self.usage.shape[1])]
        keys.sort(key=lambda k: -self.usage[k])
        engine.load_now(keys[: engine.num_slots])

    def assign(self, layer, d, engine):
        return Static.assign(self, layer, d, engine)


@register("lru")
class Lru(Policy):
    speculative = False

    def min_slots(self, m: Manifest) -> int:
        return m.dims.top_k

    def assign(self, layer, d, engine):
        return _all(d, True, "on-demand")


@dataclass
class SpacOptions:
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    estimator: bool = True        # off: levels = experts used in the last window (no inertia)
    frequency_decay: float = 0.9  # tie-break within a level: decayed count of past windows (0: off)
    balancer: bool = True         # off: run fast iff resident, fetch when count >= fetch_threshold
    fetch_threshold: int = 2


@register("spac")
class Spac(Policy):
    speculative = True
    prefetches = True

    def __init__(self, options: Optional[SpacOptions] = None, profile: Optional[DeviceProfile] = None):
        self.o = options or SpacOptions()
        self.profile = profile
        self.state: Optional[UtilityState] = None

    def setup(self, engine):
        m = engine.manifest
        self.state = UtilityState.zeros(m.dims.num_layers, m.dims.num_experts)
        self.frequency = np.zeros((m.dims.num_layers, m.dims.num_experts))
        self._rank = np.zeros_like(self.frequency)

    def rank(self, key: Key) -> float:
        """Utility level; within a level, experts used more in past windows rank higher."""
        return float(self._rank[key]) if self.state is not None else 0.0

    def evict_floor(self, key: Key) -> float:
        # same order as prefetch: never evict an expert of a higher level for this one
        return float(self.state.levels[key]) + 1.0 if self.state is not None else float("inf")

    def assign(self, layer, d, engine):
        if not self.o.balancer:
            fast = [int(e) for e, n, r in zip(d.experts, d.tokens, d.resident) if r or n >= self.o.fetch_threshold]
            fetch = [int(e) for e, n, r in zip(d.experts, d.tokens, d.resident) if not r and n >= self.o.fetch_threshold]
            slow = [int(e) for e in d.experts if int(e) not in fast]
            return Assignment(tuple(fast), tuple(slow), tuple(fetch), 0.0, "threshold", 0.0)
        return balance(d, self.profile or engine.profile, engine.expert_bytes, engine.table.claimable())

    def after_step(self, record, engine):
        if record.kind == "prefill":
            return                                   # prefill bypasses the policy
        if self.o.estimator:
            self.state = update(self.state, record.counts, record.tokens, self.o.utility)
        else:
            self.state = UtilityState((record.counts > 0).astype(np.int64))
        if self.o.frequency_decay:
            self.frequency = self.frequency * self.o.frequency_decay + record.counts
        top = self.frequency.max(initial=0.0)
        self._rank = self.state.levels + (0.99 * self.frequency / top if top > 0 else 0.0)
        if engine.prefetcher is not None:
            engine.prefetcher.submit(prefetch_order(self.state.levels, self.frequency), self.rank)


def make_policy(name: str, profile: Optional[DeviceProfile] = None, spac: Optional[SpacOptions] = None) -> Policy:
    from ..errors import ConfigError

    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown policy '{name}'; choose one of {', '.join(POLICIES)}")
    if cls is Spac:
        return Spac(spac, profile)
    return cls()
