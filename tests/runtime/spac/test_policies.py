"""Placement policies as pure decisions, replayed over recorded routing without ORT."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.profile import DeviceProfile
from spac_ort.runtime.sensor import StepRecord
from spac_ort.runtime.spac.balancer import LayerDemand
from spac_ort.runtime.spac.policies import (POLICIES, Lru, Spac, SpacOptions, StaticTop, TierView,
                                            make_policy, warm_start)
from spac_ort.runtime.spac.replay import replay
from spac_ort.runtime.spac.utility import UtilityConfig, prefetch_order

L, E, A = 4, 32, 4
PROFILE = DeviceProfile("gpu-like", 60e-6, 2e-6, 1.6e-3, 1e-4, 10e-6, 25e9)


def view(slots: int, expert_bytes: int = 1000) -> TierView:
    return TierView(tuple(range(L)), L, E, A, slots, expert_bytes, PROFILE)


def records(steps: int = 120, seed: int = 0, window: int = 5) -> list[StepRecord]:
    """A prefill of 40 tokens, then verify windows; routing skewed to a drifting hot set."""
    rng = np.random.default_rng(seed)
    out = []
    hot = [rng.choice(E, 8, replace=False) for _ in range(L)]
    for step in range(steps + 1):
        t = 40 if step == 0 else window
        counts = np.zeros((L, E), dtype=np.int64)
        for layer in range(L):
            if step % 40 == 39:
                hot[layer] = np.r_[hot[layer][4:], rng.choice(E, 4, replace=False)]
            for _ in range(t):
                pool = hot[layer] if rng.random() < 0.8 else np.arange(E)
                counts[layer, rng.choice(pool, A, replace=False)] += 1
        out.append(StepRecord(step, "prefill" if step == 0 else "verify", t, (), 0, (), counts, {}, {}))
    return out


def test_registry_has_the_six_policies():
    assert set(POLICIES) == {"resident", "cpu", "static", "sd-static", "lru", "spac"}
    with pytest.raises(Exception, match="unknown policy"):
        make_policy("fastest")


def test_resident_and_cpu_are_the_limits():
    recs = records(30)
    assert replay(make_policy("resident"), view(L * E), recs).hit_rate == 1.0
    stats = replay(make_policy("cpu"), view(0), recs)
    assert stats.pairs_hit == 0 and stats.pairs_fast == 0 and stats.pairs > 0


def test_static_places_the_last_layers():
    v = view(2 * E + 5)
    keys = make_policy("static").initial_residents(v)
    assert keys == [(l, e) for l in (2, 3) for e in range(E)]


def test_static_top_takes_the_most_used():
    usage = np.arange(L * E, dtype=float).reshape(L, E)
    keys = StaticTop(usage).initial_residents(view(3))
    assert keys == [(3, E - 1), (3, E - 2), (3, E - 3)]


def test_policies_are_pure():
    """The same inputs give the same decision, and the inputs are not changed."""
    pol = Spac(SpacOptions(utility=UtilityConfig.for_mode("scaled")))
    v = view(20)
    state = pol.initial_state(v)
    rec = records(2)[1]
    before = state.utility.levels.copy()
    first, second = pol.observe(v, state, rec), pol.observe(v, state, rec)
    assert np.array_equal(state.utility.levels, before)
    assert first.prefetch == second.prefetch
    assert np.array_equal(first.state.utility.levels, second.state.utility.levels)
    d = LayerDemand(np.array([1, 2, 3]), np.array([3, 1, 1]), np.array([True, False, False]), np.zeros(3))
    assert pol.assign(v, first.state, 0, d, 5).fast == pol.assign(v, first.state, 0, d, 5).fast


def test_warm_start_levels_follow_prefill_counts():
    counts = np.array([[0, 1, 4, 8], [2, 2, 0, 0]])
    s = warm_start(counts, 5)
    assert s.utility.levels.tolist() == [[0, 1, 3, 5], [5, 5, 0, 0]]
    assert prefetch_order(s.utility.levels, s.frequency)[:2] == [(0, 3), (1, 0)]


def test_spac_ranking_agrees_with_its_prefetch_order():
    """Eviction takes the lowest rank first: the reverse of the prefetch order. Experts
    of 100 MB: a copy costs more than a CPU run, so the utility floor holds."""
    pol, v = Spac(), view(20, expert_bytes=100_000_000)
    decision = pol.observe(v, pol.initial_state(v), records(1)[0])
    order = list(decision.prefetch)
    ranks = [decision.ranking.rank[k] for k in order]
    assert ranks == sorted(ranks, reverse=True)
    levels = decision.state.utility.levels
    # a copy of k may evict only occupants ranking below floor[k]: experts of a lower level
    assert all(decision.ranking.floor[k] == levels[k] <= decision.ranking.rank[k] < levels[k] + 1 for k in order)
    within = Spac(SpacOptions(evict_within_level=True)).observe(v, pol.initial_state(v), records(1)[0])
    assert all(within.ranking.floor[k] == levels[k] + 1 for k in order)


def test_lru_fetches_every_miss():
    recs = records(40, window=2)[1:]                         # at most 8 experts per layer, 32 per pass
    stats = replay(Lru(), view(32), recs)
    assert stats.pairs_fast == stats.pairs                   # every active expert runs fast
    assert stats.fetches_on_demand > 0 and stats.fetches_prefetch == 0 and 0 < stats.hit_rate < 1


@pytest.mark.parametrize("slots", [12, 24, 48])
def test_spac_beats_lru_on_skewed_routing(slots):
    recs = records(120)
    spac = replay(Spac(SpacOptions(utility=UtilityConfig.for_mode("scaled"))), view(slots), recs)
    lru = replay(Lru(), view(slots), recs)
    assert spac.hit_rate > lru.hit_rate, (spac.hit_rate, lru.hit_rate)


def test_warm_start_hits_from_the_first_window():
    recs = records(3)
    warm = replay(Spac(), view(48), recs[:2])
    cold = replay(Spac(SpacOptions(warm_start=False)), view(48), recs[:2])
    assert warm.fetches_prefetch > 0 and cold.fetches_prefetch == 0
    assert warm.pairs_hit > cold.pairs_hit


def test_replay_of_a_trace_file(demo_bundle, tmp_path):
    """Replaying the trace of a real run gives the hit counts the run measured (the
    prefetch made synchronous, so nothing depends on timing)."""
    from spac_ort.runtime import Generator
    from spac_ort.runtime.config import TierConfig
    from spac_ort.runtime.sensor import TraceWriter, read_trace

    trace = tmp_path / "trace.jsonl"
    for policy in ("lru", "spac"):
        gen = Generator.from_bundle(demo_bundle, tiers=TierConfig(policy, "10%", overlap=False))
        writer = TraceWriter(trace)
        gen.step_observers.append(writer)
        with gen:
            list(gen.generate("def fibonacci(n):", max_new_tokens=40))
        writer.close()
        m = gen.manifest
        recs = [StepRecord(r["step"], r["kind"], r["tokens"], tuple(r["proposed"]), r["accepted"],
                           tuple(r["emitted"]), r["counts"], {}, {}) for r in read_trace(trace, m.dims.num_experts)]
        stats = replay(make_policy(policy), gen.experts.view, recs)
        measured = [r["tiers"] for r in read_trace(trace, m.dims.num_experts)]
        assert stats.pairs == sum(t["pairs"] for t in measured)
        assert stats.pairs_hit == sum(t["pairs_hit"] for t in measured), policy


def test_spac_lifts_the_eviction_floor_only_when_copies_pay():
    from spac_ort.profile import DeviceProfile
    from spac_ort.runtime.spac.policies import SpacOptions, TierView, copies_pay, make_policy

    spac = make_policy("spac", SpacOptions())

    def view(link_bytes_per_s):
        profile = DeviceProfile("p", 20e-6, 8e-6, 150e-6, 500e-6, 10e-6, link_bytes_per_s)
        return TierView((0, 1), 2, 8, 2, 4, 18_874_368, profile)

    fast, slow = view(51e9), view(25e9)          # an 18.9 MB expert: 0.38 ms against 0.76 ms; the CPU run 0.65 ms
    assert copies_pay(fast) and not copies_pay(slow)
    state = spac.initial_state(fast)
    assert np.isinf(spac.ranking(fast, state).floor).all()
    assert np.isfinite(spac.ranking(slow, state).floor).all()
