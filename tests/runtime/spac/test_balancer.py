"""Balancer against brute force on small random instances; every path is exercised."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.profile import DeviceProfile
from spac_ort.runtime.spac.balancer import LayerDemand, balance, brute_force

GPU = DeviceProfile("gpu-like", 60e-6, 2e-6, 1.6e-3, 1e-4, 10e-6, 25e9)
EVEN = DeviceProfile("even", 50e-6, 5e-6, 50e-6, 5e-6, 5e-6, 5e9)


def _demand(rng, n):
    return LayerDemand(np.sort(rng.choice(128, n, replace=False)), rng.integers(1, 7, n), rng.random(n) < 0.5,
                       rng.integers(0, 6, n))


def _check(d, a, profile, eb, slots):
    assert sorted(a.fast + a.slow) == sorted(d.experts.tolist())
    assert set(a.fetch) <= set(a.fast)
    res = dict(zip(d.experts.tolist(), d.resident.tolist()))
    assert all(not res[e] for e in a.fetch) and all(res[e] for e in a.fast if e not in a.fetch)
    assert len(a.fetch) <= slots
    fast = sum(profile.fast(n) for e, n in zip(d.experts, d.tokens) if e in a.fast) + \
        len(a.fetch) * profile.transfer(eb)
    slow = sum(profile.slow(n) for e, n in zip(d.experts, d.tokens) if e in a.slow)
    assert max(fast, slow) == pytest.approx(a.makespan, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("profile", [GPU, EVEN])
def test_exact_path_is_optimal(profile):
    rng = np.random.default_rng(0)
    for _ in range(150):
        d = _demand(rng, int(rng.integers(1, 10)))
        slots = int(rng.integers(0, 4))
        budget = float(rng.choice([np.inf, 1e-4, 4e-4]))
        eb = int(rng.choice([100_000, 3_000_000]))
        a = balance(d, profile, eb, slots, budget)
        assert a.path == "exact"
        _check(d, a, profile, eb, slots)
        assert a.makespan == pytest.approx(brute_force(d, profile, eb, slots, budget), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("profile", [GPU, EVEN])
def test_frontier_path_is_optimal(profile):
    rng = np.random.default_rng(3)
    for _ in range(60):
        d = _demand(rng, int(rng.integers(1, 10)))
        slots = int(rng.integers(0, 4))
        a = balance(d, profile, 3_000_000, slots, enumerate_limit=0)
        assert a.path == "exact"
        _check(d, a, profile, 3_000_000, slots)
        assert a.makespan == pytest.approx(brute_force(d, profile, 3_000_000, slots), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("profile", [GPU, EVEN])
def test_milp_path_is_optimal(profile):
    rng = np.random.default_rng(1)
    for _ in range(40):
        d = _demand(rng, int(rng.integers(6, 11)))
        slots = int(rng.integers(0, 4))
        a = balance(d, profile, 3_000_000, slots, frontier_limit=0, enumerate_limit=0, milp_time_limit=1.0)
        assert a.path == "milp"
        _check(d, a, profile, 3_000_000, slots)
        assert a.makespan == pytest.approx(brute_force(d, profile, 3_000_000, slots), rel=1e-6, abs=1e-9)


def test_greedy_fallback_is_feasible_and_close():
    rng = np.random.default_rng(2)
    for _ in range(40):
        d = _demand(rng, int(rng.integers(4, 10)))
        a = balance(d, GPU, 3_000_000, 2, frontier_limit=0, enumerate_limit=0, milp_time_limit=0.0)
        assert a.path in ("greedy", "milp")
        _check(d, a, GPU, 3_000_000, 2)
        assert a.makespan <= 1.5 * brute_force(d, GPU, 3_000_000, 2) + 1e-12


def test_fast_device_takes_resident_experts():
    d = LayerDemand(np.array([1, 2, 3]), np.array([1, 1, 1]), np.array([True, True, False]), np.zeros(3))
    a = balance(d, GPU, 3_000_000, free_slots=0)
    assert set(a.fast) == {1, 2} and a.slow == (3,) and a.fetch == ()


def test_empty_layer():
    d = LayerDemand(np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=bool), np.array([]))
    assert balance(d, GPU, 1, 1).path == "trivial"


def test_lanes_in_sequence_send_each_expert_where_it_is_cheaper():
    import numpy as np

    from spac_ort.profile import DeviceProfile
    from spac_ort.runtime.spac.balancer import LayerDemand, balance

    prof = DeviceProfile("p", 1e-4, 1e-5, 1e-4, 4e-5, 0.0, 1e9)            # fast per token cheaper; copies 1 us/KB
    d = LayerDemand(np.array([1, 2, 3, 4]), np.array([1, 5, 5, 1]), np.array([True, False, False, False]),
                    np.zeros(4))
    # a fetch of 1000 B costs 1 us; 5 tokens save 150 us, 1 token saves 30 us: both worth it, but one slot only
    a = balance(d, prof, 1000, free_slots=1, parallel=False)
    assert a.path == "inline" and set(a.fast) == {1, 2} and a.fetch == (2,) and set(a.slow) == {3, 4}
    equal = DeviceProfile("stand-in", 5e-5, 5e-6, 5e-5, 5e-6, 5e-6, 5e9)   # both tiers the same: hits fast, misses slow
    b = balance(d, equal, 1000, free_slots=4, parallel=False)
    assert set(b.fast) == {1} and not b.fetch


def test_a_fast_lane_measured_as_free_is_planned_not_divided_by():
    """A calibration can measure an accelerator's cost per expert as 0 (below its timer's
    noise, e.g. fp16 slots on CUDA): every path still plans, resident experts go fast."""
    free = DeviceProfile("free-fast", 0.0, 0.0, 2.5e-3, 6e-5, 0.0, 52e9)
    rng = np.random.default_rng(5)
    for kw in ({}, {"frontier_limit": 0, "enumerate_limit": 0, "milp_time_limit": 0.0}, {"solve_worth": 1.0}):
        for _ in range(20):
            d = _demand(rng, int(rng.integers(3, 9)))
            a = balance(d, free, 9_437_184, 2, **kw)
            _check(d, a, free, 9_437_184, 2)
            assert set(d.experts[d.resident].tolist()) <= set(a.fast)
