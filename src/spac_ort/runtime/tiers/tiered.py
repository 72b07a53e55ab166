"""`TieredExperts`: the expert backend with a fast tier under a memory budget.

Per MoE layer pass:

    demand (experts, tokens, resident?, rank) --policy.assign--> fast / slow / fetch
    pin resident fast experts; claim (pinned) slots for on-demand fetches
    fast lane:  [fetch e..] -> one MoE call over the slots   (on the tier's executor)  \
    slow lane:  one MoE call over the layer's host stack     (inline)                   -> sum
    unpin

After each target pass (`on_step`, a step observer) the policy observes the record and
returns its next state, a prefetch order and a ranking; the step plan orders the
prefetches by deadline and the prefetcher copies them on the same executor. A miss never
blocks on a copy unless the policy chose to fetch it: it runs on the CPU.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ...errors import BudgetError, ConfigError
from ...manifest import Manifest
from ...profile import DeviceProfile
from ..routing import ExpertGroup, Key, combine, group_by_expert
from ..sensor import StepRecord
from ..sessions import CPU
from ..spac.balancer import Assignment, LayerDemand
from ..spac.policies import Policy, TierView
from .counters import TierCounters
from .plan import StepPlan
from .pinned import PinnedCopier
from .pools import HostPool, HostStacks, SlotPool, interleaved, lane_index
from .quant import SAME, ExpertLayout
from .prefetch import Prefetcher
from .slots import SlotTable
from .store import ExpertStore

# A CPU stand-in profile: both tiers on this CPU, copies are memcpy.
CPU_STAND_IN = DeviceProfile("cpu-stand-in", 50e-6, 5e-6, 50e-6, 5e-6, 5e-6, 5e9)
_PLAN_RANK = {"prefill": 0, "decode": 1, "verify": 2}     # --plan-out keeps the last step of the highest


class TieredExperts:
    needs_groups = False     # lanes read ids and weights (groups are formed only under a RAM budget)

    def __init__(self, bundle: Path, manifest: Manifest, policy: Policy, fast_budget: Optional[int],
                 ram_budget: Optional[int] = None, fast_providers: Sequence[str] = (CPU,),
                 profile: Optional[DeviceProfile] = None, overlap: Optional[bool] = None,
                 link_bytes_per_s: Optional[float] = None, expert_bits: Optional[int] = None,
                 fast_bits: Union[int, None, str] = SAME):
        self.manifest, self.policy = manifest, policy
        d = manifest.dims
        self.store = ExpertStore(bundle, manifest, ram_budget)
        expert_bits = _bits(self.store.bits, expert_bits, manifest)
        if expert_bits is not None and ram_budget is not None:
            raise ConfigError("quantized experts live in RAM, all of them; drop --ram-budget or --expert-quant")
        if fast_bits != SAME and self.store.bits is not None and fast_bits != self.store.bits:
            raise ConfigError(f"the bundle stores its experts as {manifest.experts.precision}; the fast tier holds "
                              "them so too: drop --fast-quant")
        fast_bits = expert_bits if fast_bits == SAME else fast_bits
        self.layout = ExpertLayout(d.hidden_size, d.expert_intermediate, expert_bits)        # the CPU lane's precision
        self.fast_layout = ExpertLayout(d.hidden_size, d.expert_intermediate, fast_bits)    # the fast tier's
        self.counters = TierCounters()
        self.link_bytes_per_s = link_bytes_per_s       # emulated link rate: a copy takes at least bytes / rate
        self.expert_bytes = self.fast_layout.nbytes   # an expert in a slot or a copy
        total = len(manifest.moe_layers()) * d.num_experts
        self.num_slots = total if fast_budget is None else min(total, fast_budget // self.expert_bytes)
        self.stand_in = not self.num_slots or fast_providers[0] == CPU     # no accelerator: a second CPU pool
        self.overlap = not self.stand_in if overlap is None else overlap
        self.view = TierView(tuple(manifest.moe_layers()), d.num_layers, d.num_experts, d.top_k, self.num_slots,
                             self.expert_bytes, profile or CPU_STAND_IN, lanes_overlap=self.overlap)
        self._check_budget(fast_budget, total)
        self.table = SlotTable(self.num_slots)
        copier = None if self.stand_in else PinnedCopier.create()       # None: pageable copies through ORT
        self.fast = SlotPool(self.num_slots, d.hidden_size, d.expert_intermediate, fast_providers,
                             copier=copier, bits=fast_bits) if self.num_slots else None
        # every expert in RAM: one MoE call per layer over its host stack; under a RAM
        # budget the store's LRU holds them and the slow lane runs them one by one
        self.stacks = (HostStacks(manifest.moe_layers(), d.num_experts, d.hidden_size, d.expert_intermediate,
                                  self._entry, copier, expert_bits) if ram_budget is None else None)
        self.host = HostPool(d.hidden_size, d.expert_intermediate) if ram_budget is not None else None
        # the fast tier at another precision than the CPU lane's: fetches copy from a host
        # mirror at the slots' precision (encoding 19 MB inside a fetch costs more than the copy)
        self.mirror = (HostStacks(manifest.moe_layers(), d.num_experts, d.hidden_size, d.expert_intermediate,
                                  lambda layer, e: self._entry(layer, e, layout=self.fast_layout), copier, fast_bits)
                       if self.stacks is not None and self.fast_layout != self.layout and self.num_slots else None)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spac-tier")
        self.plan = StepPlan(self.view.moe_layers)
        self.state: Any = policy.initial_state(self.view)
        self.ranking = policy.ranking(self.view, self.state)
        if policy.prefetches:
            import scipy.optimize  # noqa: F401  (the balancer's MILP path: imported now, not inside a first pass)
        self._no_demand = threading.Event()    # cleared while a layer's on-demand fetches copy
        self._no_demand.set()
        self.prefetcher = (Prefetcher(self.table, self._load, self.counters,
                                      self.executor if self.overlap else None, gate=self._no_demand)
                           if policy.prefetches and self.num_slots else None)
        self._load_now(policy.initial_residents(self.view))
        self.setup_bytes = self.counters.bytes_copied        # initial residency, not per token
        if self.num_slots == total:
            self.mirror = None                               # every expert has its slot: no more fetches
        self._step_mark = self.mark()
        self._last_combine = 0.0
        self._calls = 0

    def _check_budget(self, fast_budget: Optional[int], total: int) -> None:
        need, slots = self.policy.min_slots(self.view), self.num_slots
        if slots < need:
            have = "all experts" if fast_budget is None else f"{fast_budget} B"
            raise BudgetError(
                f"fast budget {have} holds {slots} experts of {self.expert_bytes} B ({100 * slots / total:.1f}% of "
                f"{total}), but policy '{self.policy.name}' needs {need}; use --fast-budget of at least "
                f"{need * self.expert_bytes} B or {math.ceil(1000 * need / total) / 10:g}%, or another policy")

    # ---- residency mechanism -------------------------------------------------------------
    def _load(self, slot: int, key: Key) -> None:
        source = self.stacks if self.fast_layout == self.layout else self.mirror
        if source is not None:
            weights = source.get(*key)
        else:                   # under a RAM budget through its LRU (at the slots' precision)
            weights = self._entry(*key, keep=self.stacks is None, layout=self.fast_layout)
        t0 = time.perf_counter()
        self.fast.load(slot, weights)
        nbytes = sum(w.nbytes for w in weights)
        if self.link_bytes_per_s:
            time.sleep(max(0.0, nbytes / self.link_bytes_per_s - (time.perf_counter() - t0)))
        self.counters.add(bytes_copied=nbytes)

    def _entry(self, layer: int, expert: int, keep: bool = False,
               layout: Optional[ExpertLayout] = None) -> tuple[np.ndarray, ...]:
        """The expert's arrays at ``layout``'s precision (default: the CPU lane's), from the
        store (``keep``: through its RAM tier). A quantized bundle's are stored that way."""
        arrays = (self.store.get if keep else self.store.read)(layer, expert)
        return arrays if self.store.bits is not None else (layout or self.layout).encode(*interleaved(*arrays))

    def _load_now(self, keys: list[Key]) -> None:
        for key in keys:
            slot = self.table.claim(key, self.ranking.rank)
            if slot is None:
                break
            self._load(slot, key)
            self.table.commit(slot)

    # ---- one layer ------------------------------------------------------------------------
    def run_layer(self, layer: int, x: np.ndarray, groups: Sequence[ExpertGroup],
                  ids: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> np.ndarray:
        t_start = time.perf_counter()
        if ids is None or weights is None:
            raise ValueError("the tiered backend needs the router outputs (ids and weights)")
        experts, tokens = np.unique(ids[ids >= 0], return_counts=True)      # ascending expert ids
        resident = self.table.resident_mask(layer, experts)
        demand = LayerDemand(experts, tokens, resident, self.ranking.rank[layer, experts])
        missing = experts[~resident]
        free = self.table.claimable_for(self.ranking.floor[layer, missing], self.ranking.rank,
                                        busy=[(layer, int(e)) for e in experts[resident]])
        a = self.policy.assign(self.view, self.state, layer, demand, free)
        fast, slow, claimed, victims = self._place(layer, a)
        out, lane_seconds = self._run_lanes(layer, x, ids, weights, fast, slow, claimed)
        route = t_start - self._last_combine if self._last_combine else 0.0    # attention + router
        self._last_combine = time.perf_counter()
        fast_set = set(fast)
        ran_fast = np.array([int(e) in fast_set for e in experts], dtype=bool)
        self.counters.add(pairs=int(tokens.sum()), pairs_hit=int(tokens[resident].sum()),
                          pairs_fast=int(tokens[ran_fast].sum()), fetch_sync=len(claimed))
        self.counters.record_layer(layer, self._last_combine - t_start, a.path, a.solve_seconds)
        self._plan_layer(layer, fast, slow, claimed, victims, lane_seconds, route)
        return out

    def _place(self, layer: int, a: Assignment) -> tuple[list[int], list[int], list[tuple[int, int]], list[Key]]:
        """Pin the resident fast experts and claim slots for the fetches; what cannot be
        pinned or claimed runs slow."""
        fetch = set(a.fetch)
        pinned = {k[1] for k in self.table.pin((layer, e) for e in a.fast if e not in fetch)}
        claimed: list[tuple[int, int]] = []
        victims: list[Key] = []
        slow = list(a.slow)
        for e in sorted(fetch):
            key = (layer, e)
            got = (self.table.claim_evicting(key, self.ranking.rank, floor=float(self.ranking.floor[key]), pin=True)
                   if self.fast is not None else None)
            if got is None:
                slow.append(e)
                self.counters.add(fetch_fallback=1)
            else:
                claimed.append((e, got[0]))
                if got[1] is not None:
                    victims.append(got[1])
        # a resident expert evicted between the residency check and the pin runs slow
        slow += [e for e in a.fast if e not in fetch and e not in pinned]
        return sorted(pinned | {e for e, _ in claimed}), slow, claimed, victims

    def _run_lanes(self, layer: int, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, fast: list[int],
                   slow: list[int], claimed: list[tuple[int, int]]) -> tuple[np.ndarray, dict[str, float]]:
        """The fast lane on the executor, the slow lane inline; unpin when both are done;
        the layer's output is the sum of the two. A fast lane alone runs inline. Without
        overlap (the default with a CPU stand-in, where both lanes share the same cores and
        a second thread only adds contention: expert calls measured 2.7x slower) the fast
        lane runs inline after the slow one."""
        def fast_lane() -> tuple[np.ndarray, float, float]:
            t0 = time.perf_counter()
            if claimed:
                self._no_demand.clear()           # prefetches wait: the link is this layer's
            try:
                for e, slot in claimed:
                    self._load(slot, (layer, e))
                    self.table.commit(slot)
            finally:
                self._no_demand.set()
            t1 = time.perf_counter()
            out = self.fast.run(x, lane_index(fast, ids, self.table.slots_of(layer, fast)), weights)
            return out, t1 - t0, time.perf_counter() - t1

        try:
            pending = self.executor.submit(fast_lane) if fast and slow and self.overlap else None
            t0 = time.perf_counter()
            slow_out = self._slow_lane(layer, x, ids, weights, slow) if slow else None
            slow_s = time.perf_counter() - t0
            fast_out, fetch_s, fast_s = (pending.result() if pending is not None else fast_lane() if fast
                                         else (None, 0.0, 0.0))
        finally:
            self.table.unpin((layer, e) for e in fast)
        t_sum = time.perf_counter()
        if fast_out is None or slow_out is None:
            out = fast_out if slow_out is None else slow_out
            out = np.zeros_like(x) if out is None else out
        else:
            out = slow_out + fast_out
        self._calls += (1 if fast else 0) + (0 if not slow else 1 if self.stacks is not None else len(slow))
        return out, {"fetch": fetch_s, "fast": fast_s, "slow": slow_s, "combine": time.perf_counter() - t_sum}

    def _slow_lane(self, layer: int, x: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                   slow: list[int]) -> np.ndarray:
        """The CPU's experts: one MoE call over the layer's host stack, or (under a RAM
        budget) one call per expert from the store, added in ascending expert order."""
        if self.stacks is not None:
            return self.stacks.run(layer, x, lane_index(slow, ids), weights)
        mine = set(slow)
        groups = [g for g in group_by_expert(ids, weights) if g.expert in mine]
        results = {g.expert: self.host.run(x if x.shape[1] == 1 else np.ascontiguousarray(x[:, g.rows]),
                                           self.store.get(layer, g.expert)) for g in groups}
        return combine(groups, results, x)

    def _plan_layer(self, layer: int, fast: list[int], slow: list[int], claimed: list[tuple[int, int]],
                    victims: list[Key], lanes: dict[str, float], route: float) -> None:
        plan = self.plan
        plan.set(f"L{layer}.route", route)
        plan.set(f"L{layer}.fetch", lanes["fetch"], experts=[e for e, _ in claimed],
                 evicts_from_layers=sorted({k[0] for k in victims}))
        plan.set(f"L{layer}.fast", lanes["fast"], experts=fast)
        plan.set(f"L{layer}.slow", lanes["slow"], experts=sorted(slow))
        plan.set(f"L{layer}.combine", lanes["combine"])

    def calls(self) -> int:
        return self._calls

    @property
    def on_device(self) -> bool:
        """The fast tier's slots live on an accelerator (not a CPU stand-in)."""
        return self.fast is not None and not self.fast.stand_in

    def warm(self, widths: Sequence[int]) -> None:
        """Run the fast tier's lane once at every width (`ExpertStack.warm`): no slot, pin
        or counter changes."""
        if self.on_device:
            self.fast.warm(widths, self.manifest.dims.top_k)

    # ---- after each target pass (a step observer) ------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        decision = self.policy.observe(self.view, self.state, record)
        self.state, self.ranking = decision.state, decision.ranking
        plan = self.plan
        plan.kind = record.kind
        plan.set("draft", record.draft_seconds)
        plan.set("head", time.perf_counter() - self._last_combine if self._last_combine else 0.0)
        last = plan.last["kind"] if plan.last else "prefill"
        plan.finish(keep=plan.last is None or _PLAN_RANK[record.kind] >= _PLAN_RANK[last])
        plan.begin(record.step + 1, record.kind)
        self._last_combine = 0.0
        if self.prefetcher is not None and decision.prefetch:
            self.prefetcher.submit(plan.by_deadline(decision.prefetch, self.num_slots), decision.ranking)

    # ---- reporting ---------------------------------------------------------------------------
    def step_counters(self) -> dict[str, int]:
        """Counters since the previous call (for the per-step trace)."""
        now = self.mark()
        delta, self._step_mark = self.counters.delta(self._step_mark, now), now
        return delta

    def mark(self) -> dict[str, Any]:
        """A snapshot of the lifetime counters; `summary(since=mark)` reports one run."""
        snap = self.counters.mark()
        snap["evictions"] = self.table.counters.evictions       # counted where they happen
        snap["storage_bytes"] = self.store.counters.storage_bytes
        return snap

    def summary(self, new_tokens: int, since: Optional[dict] = None) -> dict[str, Any]:
        """Tier counters since ``since`` (a `mark`; default: since the initial load)."""
        now = self.mark()
        if since is None:
            since = {k: (0 if not isinstance(v, dict) else {}) for k, v in now.items()}
            since["bytes_copied"] = self.setup_bytes
        out = {"policy": self.policy.name, "fast_tier": "cpu stand-in" if self.stand_in else "accelerator",
               "fast_slots": self.num_slots, "experts": self.layout.precision,
               "fast_experts": self.fast_layout.precision,
               "bytes_initial_load": self.setup_bytes}
        out.update(self.counters.summary(since, now, new_tokens))
        return out

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.executor.shutdown(wait=True)


def _bits(stored: Optional[int], asked: Optional[int], manifest: Manifest) -> Optional[int]:
    """The tiers' precision: the bundle's if it stores integers (``asked`` must agree), else ``asked``."""
    if stored is not None and asked not in (None, stored):
        raise ConfigError(f"the bundle stores its experts as {manifest.experts.precision}; drop --expert-quant "
                          f"or pass --expert-quant {manifest.experts.precision}")
    return stored if stored is not None else asked
