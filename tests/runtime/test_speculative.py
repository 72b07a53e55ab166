"""Accept rules and KV rollback, without ORT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spac_ort.runtime.kv import KVCache
from spac_ort.runtime.sampling import sample
from spac_ort.runtime.speculative import Verdict, accept_greedy, accept_sampling, certain


def _logits(rows: list[int], v: int = 6) -> np.ndarray:
    out = np.zeros((len(rows), v), np.float32)
    out[np.arange(len(rows)), rows] = 1.0
    return out


def test_greedy_accepts_agreeing_prefix_then_target_token():
    assert accept_greedy([3, 1, 4], _logits([3, 1, 5, 2])) == Verdict(2, (3, 1, 5))
    assert accept_greedy([3, 1, 4], _logits([2, 1, 4, 2])) == Verdict(0, (2,))
    assert accept_greedy([3, 1, 4], _logits([3, 1, 4, 0])) == Verdict(3, (3, 1, 4, 0))


def test_kv_truncate_rolls_back():
    cache = KVCache(num_layers=2, num_kv_heads=1, head_dim=2)
    full = np.arange(10, dtype=np.float32).reshape(1, 1, 5, 2)
    for layer in range(2):
        cache.update(layer, full, full + 100)
    assert cache.length == 5
    cache.truncate(3)
    assert cache.length == 3
    assert np.array_equal(cache.keys[1], full[:, :, :3])
    assert np.array_equal(cache.values[0], full[:, :, :3] + 100)
    assert cache.keys[0].flags["C_CONTIGUOUS"]
    cache.truncate(3)
    assert cache.length == 3
    with pytest.raises(ValueError):
        cache.truncate(4)


# ---- statistics: speculative sampling reproduces the target's distribution -------------

V = 4          # a tiny vocabulary
N = 3          # tokens generated per sample
SAMPLES = 30000


def _markov(seed: int) -> np.ndarray:
    """A tiny "language model": next-token distribution given the previous token, [V, V]."""
    m = np.random.default_rng(seed).random((V, V)) ** 3 + 0.02
    return m / m.sum(axis=1, keepdims=True)


def _accept_no_residual(drafts, q, p, rng):
    """A wrong rule: rejects correctly but resamples from p instead of the residual."""
    for i, d in enumerate(drafts):
        if rng.random() * q[i, d] >= p[i, d]:
            return Verdict(i, tuple(drafts[:i]) + (sample(p[i], rng),))
    return Verdict(len(drafts), tuple(drafts) + (sample(p[len(drafts)], rng),))


def _generate(rule, target, draft, k, rng) -> tuple[int, ...]:
    seq = [0]
    while len(seq) < N + 1:
        drafts, q = [], []
        prev = seq[-1]
        for _ in range(k):
            if draft is None:                        # proposed with certainty, as from the context
                prev = (prev + 1) % V
                drafts.append(prev)
                continue
            q.append(draft[prev])
            prev = sample(draft[prev], rng)
            drafts.append(prev)
        p = np.stack([target[t] for t in [seq[-1], *drafts]])
        seq.extend(rule(drafts, np.stack(q) if q else certain(drafts, V), p, rng).tokens)
    return tuple(seq[1:N + 1])


def _chi2(rule, k: int, seed: int, certain_drafts: bool = False) -> float:
    target, draft = _markov(1), None if certain_drafts else _markov(2)
    rng = np.random.default_rng(seed)
    seqs = list(itertools.product(range(V), repeat=N))
    index = {s: i for i, s in enumerate(seqs)}
    observed = np.zeros(len(seqs))
    for _ in range(SAMPLES):
        observed[index[_generate(rule, target, draft, k, rng)]] += 1
    expected = np.array([np.prod([target[a, b] for a, b in zip((0,) + s[:-1], s)]) for s in seqs]) * SAMPLES
    return float(((observed - expected) ** 2 / expected).sum())


# chi-square with 63 degrees of freedom: the 99.9th percentile is about 103
CHI2_LIMIT = 103.0


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_sampling_matches_target_distribution(k):
    assert _chi2(accept_sampling, k, seed=k) < CHI2_LIMIT


def test_certain_drafts_keep_the_target_distribution():
    assert _chi2(accept_sampling, 2, seed=7, certain_drafts=True) < CHI2_LIMIT
    assert _chi2(_accept_no_residual, 2, seed=8, certain_drafts=True) > 3 * CHI2_LIMIT


def test_wrong_accept_rule_is_detected():
    assert _chi2(_accept_no_residual, 3, seed=5) > 3 * CHI2_LIMIT
