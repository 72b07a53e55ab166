"""Drafts from the context, and the K controller choosing between the two draft sources:
pure, no ORT, no clocks."""

from __future__ import annotations

import random

import pytest

from spac_ort.runtime.draft_control import DraftControlConfig, DraftController, FixedDraft, Pick
from spac_ort.runtime.lookup import ContextLookup

MS = 1e-3


def test_lookup_proposes_what_followed_the_latest_earlier_occurrence():
    lookup = ContextLookup(n=2)
    seq = [1, 2, 3, 4, 9, 1, 2, 5, 6, 1, 2]
    assert lookup.propose(seq, 3) == [5, 6, 1]            # the later of the two earlier "1 2"
    assert lookup.propose(seq, 0) == []


def test_lookup_is_empty_without_an_earlier_occurrence_and_follows_a_growing_sequence():
    lookup = ContextLookup(n=3)
    seq = [7, 8, 9, 10, 11]
    assert lookup.propose(seq, 4) == []
    seq += [7, 8, 9]                                      # grows: indexed incrementally
    assert lookup.propose(seq, 4) == [10, 11, 7, 8]
    assert lookup.propose([7, 8, 9, 12, 7, 8, 9], 2) == [12, 7]    # another sequence: a fresh index


def test_lookup_rejects_a_zero_length_ngram():
    with pytest.raises(ValueError):
        ContextLookup(n=0)


def run(ctrl: DraftController, steps: int, lookup_acceptance: float, model_acceptance: float,
        offered: int = 8, seed: int = 0) -> list[Pick]:
    """Plain pass 4 ms, each further verified token 1 ms, a draft-model token 1 ms, context
    drafts free; drafts are accepted one by one with the given probabilities."""
    rng = random.Random(seed)
    picks = []
    for _ in range(steps):
        pick = ctrl.pick(lookup=offered)
        a = lookup_acceptance if pick.lookup else model_acceptance
        accepted = 0
        while accepted < pick.k and rng.random() < a:
            accepted += 1
        draft_s = 0.0 if pick.lookup else pick.k * MS
        ctrl.observe(pick.k, accepted, draft_s, (4.0 + pick.k) * MS, pick.k + 1, lookup=pick.lookup)
        picks.append(pick)
    return picks


def test_context_drafts_that_are_right_are_used_with_long_windows():
    picks = run(DraftController(), 300, lookup_acceptance=0.95, model_acceptance=0.1)
    late = picks[100:]
    assert sum(p.lookup for p in late) > 0.9 * len(late)
    assert sum(p.k for p in late) / len(late) >= 4


def test_context_drafts_that_are_wrong_are_dropped_and_probed_rarely():
    picks = run(DraftController(), 400, lookup_acceptance=0.02, model_acceptance=0.02)
    late = picks[100:]
    assert sum(p.k == 0 for p in late) > 0.95 * len(late)
    assert 0 < sum(p.lookup for p in picks) < 20


def test_no_context_drafts_are_picked_when_none_are_offered():
    picks = run(DraftController(), 200, lookup_acceptance=0.99, model_acceptance=0.9, offered=0)
    assert not any(p.lookup for p in picks)
    assert sum(p.k > 0 for p in picks[50:]) > 100            # the draft model pays here


def test_a_window_never_exceeds_what_the_context_offers():
    picks = run(DraftController(), 200, lookup_acceptance=0.99, model_acceptance=0.0, offered=2)
    assert all(p.k <= 2 for p in picks if p.lookup)
    assert sum(p.lookup for p in picks[50:]) > 100


def test_a_fixed_k_ignores_the_context():
    assert FixedDraft(3).pick(lookup=8) == Pick(3, False)


def test_a_policy_that_needs_windows_gets_one_from_either_source():
    ctrl = DraftController(DraftControlConfig(min_k=1))
    assert all(p.k >= 1 for p in run(ctrl, 200, lookup_acceptance=0.5, model_acceptance=0.05))
