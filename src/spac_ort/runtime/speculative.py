"""Speculative decoding: one step, and its accept rules.

    speculative_step:  draft K (or take K from the context) -> verify K+1 -> accept ->
                       roll back both KV caches

The accept rules are pure functions (no ORT, no clocks); the step drives the two models
and times its parts for the report and the K controller.

Legend: K draft tokens, V vocabulary. The target verifies K+1 inputs
``[last, d_1 .. d_K]``; row i of its output predicts the token after input i.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Optional, Protocol, Sequence

import numpy as np

from .kv import KVCache
from .sampling import SamplingConfig, probabilities, sample


@dataclass(frozen=True)
class Verdict:
    accepted: int               # draft tokens accepted, 0..K
    tokens: tuple[int, ...]     # emitted: the accepted drafts, then one token of the target


def accept_greedy(drafts: Sequence[int], target_logits: np.ndarray) -> Verdict:
    """Longest prefix of drafts equal to the target's argmax, plus the target's next token.

    target_logits: [K+1, V].
    """
    best = np.argmax(target_logits, axis=-1)                       # [K+1]
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return Verdict(n, tuple(int(d) for d in drafts[:n]) + (int(best[n]),))


def accept_sampling(drafts: Sequence[int], q: np.ndarray, p: np.ndarray, rng: np.random.Generator) -> Verdict:
    """Speculative rejection sampling: the emitted tokens follow the target's distribution.

    q: [K, V] draft distributions the drafts were sampled from; p: [K+1, V] the target's.
    Draft i is kept with probability min(1, p_i(d) / q_i(d)); on the first rejection a
    token is drawn from the residual max(0, p_i - q_i); if all are kept, one more token is
    drawn from p_K.
    """
    for i, d in enumerate(drafts):
        if rng.random() * q[i, d] < p[i, d]:                        # u < p/q without dividing by 0
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        token = sample(residual if residual.sum() > 0 else p[i], rng)
        return Verdict(i, tuple(int(x) for x in drafts[:i]) + (token,))
    return Verdict(len(drafts), tuple(int(x) for x in drafts) + (sample(p[len(drafts)], rng),))


def certain(drafts: Sequence[int], vocab: int) -> np.ndarray:
    """[K, V] one-hot rows: the "distributions" of drafts proposed with certainty (from the
    context). With them `accept_sampling` keeps draft d with probability p(d) and otherwise
    draws from p without d, so the emitted tokens still follow the target's distribution."""
    q = np.zeros((len(drafts), vocab), dtype=np.float64)
    q[np.arange(len(drafts)), list(drafts)] = 1.0
    return q


class Draft(Protocol):
    def forward(self, ids: Sequence[int], cache: KVCache) -> np.ndarray: ...          # [V]


class Target(Protocol):
    def forward(self, ids: Sequence[int], cache: KVCache, last_only: bool = True) -> np.ndarray: ...  # [T, V]


@dataclass(frozen=True)
class Window:
    """One speculative step: the drafts, the verdict, and what each part cost."""

    drafts: tuple[int, ...]
    verdict: Verdict
    catchup_seconds: float      # the draft reading tokens it skipped (plain passes, the prompt)
    draft_seconds: float        # proposing the K drafts
    verify_seconds: float       # the target pass over K+1 tokens, acceptance, rollback


def speculative_step(draft: Draft, target: Target, seq: list[int], k: int, cache: KVCache, dcache: KVCache,
                     sampling: SamplingConfig, rng: np.random.Generator,
                     proposed: Optional[Sequence[int]] = None) -> Window:
    """Propose K tokens after ``seq``, verify them in one target pass, keep the accepted
    prefix and one token of the target; both caches end at the committed sequence.
    ``proposed``: K drafts from elsewhere (the context); the draft model then does not run
    and its cache falls behind, to catch up in its next window."""
    if proposed is not None:
        return _verify(target, seq, tuple(int(t) for t in proposed), cache, dcache, sampling, rng, 0.0, 0.0)
    t0 = perf_counter()
    feed = seq[dcache.length:]
    if len(feed) > 2:                        # catch up on skipped tokens in one call
        draft.forward(feed[:-1], dcache)
        feed = feed[-1:]
    t1 = perf_counter()
    drafts: list[int] = []
    q: list[np.ndarray] = []                 # [K][V] the distributions the drafts were drawn from
    for _ in range(k):
        logits = draft.forward(feed, dcache)                                       # [V]
        if sampling.greedy:
            drafts.append(int(np.argmax(logits)))
        else:
            q.append(probabilities(logits, sampling))
            drafts.append(sample(q[-1], rng))
        feed = drafts[-1:]
    return _verify(target, seq, tuple(drafts), cache, dcache, sampling, rng, t1 - t0, perf_counter() - t1,
                   np.stack(q) if q else None)


def _verify(target: Target, seq: list[int], drafts: tuple[int, ...], cache: KVCache, dcache: KVCache,
            sampling: SamplingConfig, rng: np.random.Generator, catchup_s: float, draft_s: float,
            q: Optional[np.ndarray] = None) -> Window:
    """The target pass over ``[last, *drafts]``, the verdict, and both caches rolled back.
    ``q``: the draft distributions for sampling; None: the drafts were certain (one-hot)."""
    t2 = perf_counter()
    logits = target.forward([seq[-1], *drafts], cache, last_only=False)          # [K+1, V]
    if sampling.greedy:
        verdict = accept_greedy(drafts, logits)
    else:
        if q is None:
            q = certain(drafts, logits.shape[-1])
        verdict = accept_sampling(drafts, q, np.stack([probabilities(r, sampling) for r in logits]), rng)
    committed = len(seq) + verdict.accepted                  # target cache keeps [.. last, d_1 .. d_n]
    cache.truncate(committed)
    dcache.truncate(min(dcache.length, committed))
    return Window(drafts, verdict, catchup_s, draft_s, perf_counter() - t2)
