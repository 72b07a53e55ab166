"""The draft length controller on synthetic costs: pure, no ORT, no clocks."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from spac_ort.errors import ConfigError
from spac_ort.runtime.draft_control import (DraftControlConfig, DraftController, FixedDraft, expected_tokens,
                                            step_rates)

MS = 1e-3


def simulate(ctrl: DraftController, steps: int, acceptance: Callable[[int], float],
             verify: Callable[[int], float], draft: float, seed: int = 0,
             slowdown: float = 0.0) -> list[int]:
    """Run ``steps`` steps: drafts are accepted one by one with probability acceptance(step);
    a pass over T tokens takes verify(T) seconds, a draft token ``draft`` seconds; with
    probability ``slowdown`` a measurement takes twice as long (a busy machine)."""
    rng = random.Random(seed)
    chosen = []
    for i in range(steps):
        k = ctrl.choose()
        accepted = 0
        while accepted < k and rng.random() < acceptance(i):
            accepted += 1
        noise = 2.0 if rng.random() < slowdown else 1.0
        ctrl.observe(k, accepted, k * draft * noise, verify(k + 1) * noise, k + 1)
        chosen.append(k)
    return chosen


def expensive(t: int) -> float:
    return (4.0 + 2.0 * (t - 1)) * MS           # every verified token costs half a plain pass


def flat(t: int) -> float:
    return (4.0 + 0.05 * (t - 1)) * MS          # a GPU-like verify: T tokens cost about one


def test_expected_tokens_and_rates():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    rates = step_rates(0.0, 1 * MS, 4 * MS, 2 * MS, 4)                       # drafts never match
    assert max(range(5), key=rates.__getitem__) == 0
    rates = step_rates(0.9, 0.1 * MS, 4 * MS, 0.01 * MS, 8)                  # cheap and right
    assert max(range(9), key=rates.__getitem__) == 8


def test_picks_plain_when_drafts_never_match_and_verify_is_expensive():
    ks = simulate(DraftController(), 400, lambda i: 0.0, expensive, 1 * MS)
    assert ks[0] == 0                                         # a plain pass is timed first
    windows = [i for i, k in enumerate(ks) if k > 0]
    assert len(windows) <= 8                                   # a few probes, then plain
    assert ks[-100:].count(0) >= 98


def test_picks_a_large_k_when_acceptance_is_high_and_verify_flat():
    ks = simulate(DraftController(), 60, lambda i: 0.95, flat, 0.2 * MS)
    assert min(ks[-20:]) >= 6
    assert max(ks) <= DraftControlConfig().max_k


def test_probe_intervals_grow_while_probes_lose():
    cfg = DraftControlConfig(probe_interval=8, max_probe_interval=64)
    ks = simulate(DraftController(cfg), 600, lambda i: 0.0, expensive, 1 * MS)
    windows = [i for i, k in enumerate(ks) if k > 0]
    gaps = [b - a - 1 for a, b in zip(windows, windows[1:])]    # plain passes between windows
    assert gaps and all(g >= 8 for g in gaps[1:])
    assert gaps == sorted(gaps) and gaps[-1] == 64              # doubling up to the limit
    assert all(ks[i] == 1 for i in windows[1:])                 # probes are short


def test_an_expensive_probe_stretches_the_interval():
    def gaps(catchup: float) -> list[int]:
        """Plain passes between windows; drafts never match, a window costs 0.15 ms more
        than a plain pass, plus ``catchup`` seconds of the draft reading skipped tokens."""
        ctrl = DraftController(DraftControlConfig(probe_interval=8, max_probe_interval=128, probe_budget=0.01))
        ks = []
        for _ in range(200):
            k = ctrl.choose()
            ctrl.observe(k, 0, k * 0.1 * MS, flat(k + 1), k + 1, catchup_seconds=catchup if k else 0.0)
            ks.append(k)
        windows = [i for i, k in enumerate(ks) if k > 0]
        return [b - a - 1 for a, b in zip(windows, windows[1:])]

    cheap = gaps(0.0)
    assert {16, 32, 64} <= set(cheap)                               # a cheap loss: the interval doubles
    dear = gaps(20 * MS)                                            # catching up costs 5 plain passes
    assert 128 in dear and not {16, 32, 64} & set(dear)             # straight to the longest interval


def test_switches_back_when_the_text_becomes_predictable():
    def cheap(t: int) -> float:
        return (4.0 + 0.5 * (t - 1)) * MS

    ctrl = DraftController(DraftControlConfig(max_probe_interval=32))
    ks = simulate(ctrl, 300, lambda i: 0.0 if i < 150 else 0.95, cheap, 0.3 * MS)
    assert ks[100:150].count(0) >= 45                          # hopeless text: plain
    late = ks[150 + 2 * 32:]
    anchors = len(late) // ctrl.config.anchor_interval + 1    # a plain pass now and then re-measures v
    assert late.count(0) <= anchors + 1 and sum(late) / len(late) >= 3    # predictable text: windows again


def test_policy_minimum_of_one_draft_token():
    ctrl = DraftController(DraftControlConfig(min_k=1))
    ks = simulate(ctrl, 100, lambda i: 0.0, expensive, 1 * MS)
    assert min(ks) == 1


def test_a_busy_machine_does_not_hide_a_winning_k():
    ks = simulate(DraftController(), 200, lambda i: 0.8, lambda t: (4.0 + 0.6 * (t - 1)) * MS, 0.4 * MS,
                  slowdown=0.4)
    assert ks[-100:].count(0) <= 5 and sum(ks[-100:]) / 100 >= 2


def test_fixed_draft_is_constant():
    fixed = FixedDraft(4)
    fixed.observe(4, 0, 1.0, 1.0, 5)
    assert fixed.choose() == 4 and fixed.mode == 4 and fixed.largest == 4


@pytest.mark.parametrize("kwargs", [dict(max_k=0), dict(min_k=3, max_k=2), dict(smoothing=0.0),
                                    dict(probe_interval=0), dict(probe_interval=64, max_probe_interval=32),
                                    dict(prior_acceptance=1.0), dict(prior_token_cost=-1.0)])
def test_config_is_validated(kwargs):
    with pytest.raises(ConfigError):
        DraftControlConfig(**kwargs)
