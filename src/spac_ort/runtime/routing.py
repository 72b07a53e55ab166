"""Pure functions over router outputs: group tokens by expert, count demand.

Legend: T tokens, A experts per token (top-k), E experts, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


Key = tuple[int, int]      # (layer, expert): one expert of the model


@dataclass(frozen=True)
class ExpertGroup:
    """The tokens one expert serves in one layer pass."""

    expert: int
    rows: np.ndarray      # [n] token indices into the T tokens
    weights: np.ndarray   # [n] routing weight of this expert for each of those tokens


def group_by_expert(ids: np.ndarray, weights: np.ndarray) -> list[ExpertGroup]:
    """Tokens grouped per active expert, experts in ascending id order.

    ids, weights: [T, A]. Ascending order matches the reference implementation's
    accumulation order, so fp32 sums are formed in the same sequence.
    """
    flat = ids.reshape(-1)                                   # [T*A]
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], flat.size]
    a = ids.shape[1]
    w = weights.reshape(-1)
    return [ExpertGroup(int(sorted_ids[s]), order[s:e] // a, w[order[s:e]]) for s, e in zip(starts, ends)]


def expert_counts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """[E] number of tokens routed to each expert (the verify-window sensor)."""
    return np.bincount(ids.reshape(-1), minlength=num_experts)


def combine(groups: list[ExpertGroup], outputs: dict[int, np.ndarray], like: np.ndarray) -> np.ndarray:
    """[1, T, H] weighted sum of expert outputs per token, experts added in ascending id
    order (the reference implementation's order). outputs[e]: [1, n_e, H]."""
    out = np.zeros_like(like)
    for g in groups:
        out[:, g.rows] += outputs[g.expert] * g.weights[None, :, None]
    return out
