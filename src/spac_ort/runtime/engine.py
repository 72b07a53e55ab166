"""`TieredExperts`: the expert backend with a fast tier under a memory budget.

Per MoE layer pass:

    demand (experts, tokens, resident?, utility) --policy.assign--> fast / slow / fetch
    pin resident fast experts; claim (pinned) slots for on-demand fetches
    step plan:  [fetch e..] -> fast runs   (fast lane)  \
                slow runs from host memory (slow lane)    -> combine (ascending expert id)
    unpin

After each target pass the policy updates utilities and queues prefetches. A miss never
blocks on a copy unless the policy chose to fetch it: it runs on the CPU.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import BudgetError
from ..manifest import Manifest
from ..profile import DeviceProfile
from .balancer import LayerDemand
from .cache import Key, SlotTable
from .plan import StepPlan
from .policies import Policy
from .pools import HostPool, SlotPool
from .prefetch import Prefetcher
from .routing import ExpertGroup, combine
from .sensor import StepRecord
from .sessions import CPU
from .store import ExpertStore

log = logging.getLogger(__name__)

# A CPU stand-in profile: both tiers on this CPU, copies are memcpy.
CPU_STAND_IN = DeviceProfile("cpu-stand-in", 50e-6, 5e-6, 50e-6, 5e-6, 5e-6, 5e9)


@dataclass
class TierStats:
    pairs: int = 0                 # (token, expert) pairs routed
    pairs_hit: int = 0             # ... whose expert was resident on the fast tier
    pairs_fast: int = 0            # ... computed on the fast tier
    pairs_slow: int = 0
    fetch_sync: int = 0            # on-demand fetches (in the critical path)
    fetch_fallback: int = 0        # chosen for fast, no slot free: ran on CPU
    balancer_paths: dict[str, int] = field(default_factory=dict)
    balancer_seconds: list[float] = field(default_factory=list)
    layer_seconds: dict[int, float] = field(default_factory=dict)


class TieredExperts:
    def __init__(self, bundle: Path, manifest: Manifest, policy: Policy, fast_budget: Optional[int],
                 ram_budget: Optional[int] = None, fast_providers: Sequence[str] = (CPU,),
                 profile: Optional[DeviceProfile] = None, synchronous_prefetch: bool = False,
                 plan: Optional[StepPlan] = None):
        self.manifest, self.policy = manifest, policy
        self.store = ExpertStore(bundle, manifest, ram_budget)
        self.expert_bytes = self.store.expert_bytes
        total = len(manifest.moe_layers()) * manifest.dims.num_experts
        slots = total if fast_budget is None else min(total, fast_budget // self.expert_bytes)
        need = policy.min_slots(manifest)
        if slots < need:
            raise BudgetError(
                f"fast budget {fast_budget} B holds {slots} experts of {self.expert_bytes} B, but policy "
                f"'{policy.name}' needs {need}; use --fast-budget of at least {need * self.expert_bytes} B "
                f"({100 * need / total:.1f}% of all experts) or another policy")
        self.num_slots = slots
        self.table = SlotTable(slots)
        d = manifest.dims
        self.fast = SlotPool(slots, d.hidden_size, d.expert_intermediate, fast_providers) if slots else None
        self.host = HostPool(d.hidden_size, d.expert_intermediate)
        self.profile = profile or CPU_STAND_IN
        self.plan = plan or StepPlan()
        self.stats = TierStats()
        self.prefetcher = (Prefetcher(self.table, self._load, synchronous_prefetch)
                           if policy.prefetches and slots else None)
        self._calls = 0
        self._last_combine = 0.0
        self._last_node = ""
        self._snapshot: dict[str, int] = {}
        self.last_plan: Optional[StepPlan] = None
        policy.setup(self)
        self.setup_bytes = self.fast.bytes_copied if self.fast else 0     # initial residency, not per token

    @property
    def stand_in(self) -> bool:
        return self.fast is None or self.fast.stand_in

    # ---- residency mechanism -------------------------------------------------------------
    def _load(self, slot: int, key: Key) -> None:
        assert self.fast is not None
        self.fast.load(slot, self.store.get(*key))

    def load_now(self, keys: list[Key]) -> None:
        for key in keys:
            slot = self.table.claim(key, self.policy.rank)
            if slot is None:
                break
            self._load(slot, key)
            self.table.commit(slot)

    # ---- one layer ------------------------------------------------------------------------
    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        t_start = time.perf_counter()
        st, table, plan = self.stats, self.table, self.plan
        experts = np.array([g.expert for g in groups], dtype=np.int64)
        tokens = np.array([g.rows.size for g in groups], dtype=np.int64)
        resident = np.array([table.resident((layer, int(e))) for e in experts], dtype=bool)
        levels = np.array([self.policy.rank((layer, int(e))) for e in experts])
        a = self.policy.assign(layer, LayerDemand(experts, tokens, resident, levels), self)
        st.balancer_paths[a.path] = st.balancer_paths.get(a.path, 0) + 1
        if a.path not in ("all-fast", "all-slow", "static", "on-demand", "threshold"):
            st.balancer_seconds.append(a.solve_seconds)
        fetch = set(a.fetch)
        pinned = set(k[1] for k in table.pin((layer, e) for e in a.fast if e not in fetch))
        claimed: list[tuple[int, int]] = []
        victims: list[Key] = []
        slow = list(a.slow)
        for e in sorted(fetch):
            key = (layer, e)
            got = (table.claim_evicting(key, self.policy.rank, floor=self.policy.evict_floor(key), pin=True)
                   if self.fast is not None else None)
            if got is None:
                slow.append(e)
                st.fetch_fallback += 1
            else:
                claimed.append((e, got[0]))
                if got[1] is not None:
                    victims.append(got[1])
        fast = sorted(pinned | {e for e, _ in claimed})
        # a resident expert that was evicted between the residency check and the pin runs slow
        slow += [e for e in a.fast if e not in fetch and e not in pinned]
        results: dict[int, np.ndarray] = {}
        rows = {g.expert: g.rows for g in groups}
        t = x.shape[1]

        def inputs(e: int) -> np.ndarray:
            r = rows[e]
            return x if t == 1 else np.ascontiguousarray(x[:, r])

        def fetch_all() -> None:
            for e, slot in claimed:
                self._load(slot, (layer, e))
                table.commit(slot)

        def run_fast() -> None:
            for e in fast:
                results[e] = self.fast.run(table.slot_of((layer, e)), inputs(e))

        def run_slow() -> None:
            for e in slow:
                results[e] = self.host.run(inputs(e), self.store.get(layer, e))

        # attention + router of this layer ran since the previous layer's combine
        route = plan.record(f"L{layer}.route", "host", t_start - self._last_combine if self._last_combine else 0.0,
                            deps=[self._last_node or "draft"])
        names = []
        if claimed:
            names.append(plan.add(f"L{layer}.fetch", "fast", fetch_all, deps=[route],
                                  experts=[e for e, _ in claimed]))
            for prev_layer, _ in victims:        # slot dependency: the evicted expert's last run
                node = f"L{prev_layer}.fast"
                if prev_layer != layer and node in plan.graph:
                    plan.graph.add_edge(node, f"L{layer}.fetch")
        if fast:
            names.append(plan.add(f"L{layer}.fast", "fast", run_fast, deps=[route, *names], experts=fast))
        if slow:
            names.append(plan.add(f"L{layer}.slow", "slow", run_slow, deps=[route], experts=sorted(slow)))
        try:
            plan.run(names)
        finally:
            table.unpin((layer, e) for e in fast)
        t_combine = time.perf_counter()
        out = combine(groups, results, x)                                  # [1, T, H]
        plan.record(f"L{layer}.combine", "host", time.perf_counter() - t_combine, deps=names or [route])
        self._last_combine = time.perf_counter()
        self._last_node = f"L{layer}.combine"
        n_pairs = int(tokens.sum())
        st.pairs += n_pairs
        st.pairs_hit += int(tokens[resident].sum())
        fast_set = set(fast)
        st.pairs_fast += int(sum(n for e, n in zip(experts, tokens) if int(e) in fast_set))
        st.pairs_slow += n_pairs - int(sum(n for e, n in zip(experts, tokens) if int(e) in fast_set))
        st.fetch_sync += len(claimed)
        st.layer_seconds[layer] = st.layer_seconds.get(layer, 0.0) + time.perf_counter() - t_start
        self._calls += len(groups)
        return out

    def calls(self) -> int:
        return self._calls

    # ---- after each target pass ------------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        self.policy.after_step(record, self)
        if record.kind == "verify" or self.last_plan is None:
            self.last_plan, self.plan = self.plan, StepPlan()
        self.plan.reset(record.step + 1)
        self._last_combine = 0.0
        self._last_node = ""

    def step_delta(self) -> dict[str, int]:
        """Counters since the previous call (for the per-step trace)."""
        st, pf = self.stats, self.prefetcher.counters if self.prefetcher else None
        now = {"pairs": st.pairs, "pairs_hit": st.pairs_hit, "pairs_fast": st.pairs_fast,
               "fetches_on_demand": st.fetch_sync, "fetches_prefetch": pf.fetched if pf else 0,
               "evictions": self.table.counters.evictions,
               "bytes_to_fast": (self.fast.bytes_copied if self.fast else 0) - self.setup_bytes}
        delta = {k: v - self._snapshot.get(k, 0) for k, v in now.items()}
        self._snapshot = now
        return delta

    def mark(self) -> dict:
        """A snapshot of the lifetime counters; `summary(since=mark)` reports one run."""
        st, pf = self.stats, self.prefetcher.counters if self.prefetcher else None
        return {"pairs": st.pairs, "pairs_hit": st.pairs_hit, "pairs_fast": st.pairs_fast,
                "fetch_sync": st.fetch_sync, "fetch_fallback": st.fetch_fallback,
                "paths": dict(st.balancer_paths), "n_balancer": len(st.balancer_seconds),
                "layer_seconds": dict(st.layer_seconds), "prefetched": pf.fetched if pf else 0,
                "n_delay": len(pf.queue_delay_s) if pf else 0, "evictions": self.table.counters.evictions,
                "copied": self.fast.bytes_copied if self.fast else 0,
                "storage": self.store.counters.storage_bytes}

    def summary(self, new_tokens: int, since: Optional[dict] = None) -> dict:
        """Tier counters since ``since`` (a `mark`; default: since the initial load)."""
        now = self.mark()
        base = since or {k: (0 if not isinstance(v, dict) else {}) for k, v in now.items()}
        if since is None:
            base["copied"] = self.setup_bytes
        d = {k: now[k] - base[k] for k in now if not isinstance(now[k], dict)}
        pf = self.prefetcher.counters if self.prefetcher else None
        st = self.stats
        paths = {k: v - base["paths"].get(k, 0) for k, v in now["paths"].items() if v - base["paths"].get(k, 0)}
        balancer = st.balancer_seconds[base["n_balancer"]:]
        delays = pf.queue_delay_s[base["n_delay"]:] if pf else []
        return {
            "policy": self.policy.name,
            "fast_tier": "cpu stand-in" if self.stand_in else "accelerator",
            "fast_slots": self.num_slots,
            "hit_rate": d["pairs_hit"] / d["pairs"] if d["pairs"] else 0.0,
            "fast_share": d["pairs_fast"] / d["pairs"] if d["pairs"] else 0.0,
            "fetches_on_demand": d["fetch_sync"],
            "fetches_prefetch": d["prefetched"],
            "fetch_fallbacks": d["fetch_fallback"],
            "evictions": d["evictions"],
            "bytes_initial_load": self.setup_bytes,
            "bytes_to_fast": d["copied"],
            "bytes_to_fast_per_token": d["copied"] / new_tokens if new_tokens else 0.0,
            "storage_bytes": d["storage"],
            "balancer_paths": paths,
            "balancer_median_us": statistics.median(balancer) * 1e6 if balancer else 0.0,
            "prefetch_queue_delay_ms": statistics.median(delays) * 1e3 if delays else 0.0,
            "layer_seconds": {str(k): v - base["layer_seconds"].get(k, 0.0)
                              for k, v in sorted(now["layer_seconds"].items())},
        }

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
