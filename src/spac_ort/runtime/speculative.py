"""Accept rules of speculative decoding. Pure functions, no ORT, no clocks.

Legend: K draft tokens, V vocabulary. The target verified K+1 inputs
``[last, d_1 .. d_K]``; row i of its output predicts the token after input i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .sampling import sample


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
