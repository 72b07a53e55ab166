"""Heterogeneous Workload Balancer: which active experts of a layer run on the fast tier.

Per layer and step, each active expert e (n_e tokens, resident on the fast tier or not)
runs either fast (paying a transfer first when not resident) or slow (CPU, where every
expert is reachable). Minimise the layer's makespan

    M >= sum_fast (fast(n_e) + transfer_e [not resident])     (fast lane, copies serialised)
    M >= sum_slow slow(n_e)                                   (slow lane)

subject to: fetched experts <= free fast slots, their transfer time <= the time available.

Experts with the same (tokens, resident) are interchangeable, so the problem is solved
over classes: y_j = how many of class j run fast, integer in 0..size_j. Every expert has
the same size, so the transfer-time limit is a cap on the number of fetches. Paths:
``exact``: every class combination when there are few, else a dynamic program over
classes that keeps the Pareto frontier of (fast load, slow load) per fetch count, pruned
by the greedy makespan; exact and cheap while the frontier stays small; ``milp``:
scipy.optimize.milp (HiGHS) with a time limit when the frontier grows past
``frontier_limit``; ``greedy``: the fallback when the MILP finds nothing in time.
Pure: no ORT, no threads.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...profile import DeviceProfile

FRONTIER_LIMIT = 20000     # exact DP while the Pareto frontier stays at most this large
ENUMERATE_LIMIT = 2048     # below this many class combinations, enumerate them all


@dataclass(frozen=True)
class LayerDemand:
    experts: np.ndarray        # [N] expert ids
    tokens: np.ndarray         # [N] tokens routed to each
    resident: np.ndarray       # [N] bool, already on the fast tier
    utility: np.ndarray        # [N] utility level (tie-break: who gets fetched)


@dataclass(frozen=True)
class Assignment:
    fast: tuple[int, ...]      # expert ids to run on the fast tier
    slow: tuple[int, ...]      # expert ids to run on the slow tier
    fetch: tuple[int, ...]     # the fast ones that must be transferred first
    makespan: float            # predicted seconds
    path: str                  # "exact" | "milp" | "greedy" | "trivial"
    solve_seconds: float


def _classes(d: LayerDemand):
    keys = sorted(set(zip(d.tokens.tolist(), d.resident.tolist())))
    members = {k: [] for k in keys}
    for i, k in enumerate(zip(d.tokens.tolist(), d.resident.tolist())):
        members[k].append(i)
    for k in keys:   # within a class, prefer high utility for the fast tier
        members[k].sort(key=lambda i: (-d.utility[i], d.experts[i]))
    return keys, members


def _costs(keys, profile: DeviceProfile, expert_bytes: int):
    n = np.array([k[0] for k in keys], dtype=np.float64)
    res = np.array([k[1] for k in keys], dtype=bool)
    xfer = np.where(res, 0.0, profile.transfer(expert_bytes))
    return profile.fast(n) + xfer, profile.slow(n), ~res, xfer


def _frontier(size, fast_cost, slow_cost, fetched, cap: int, limit: int, bound: float) -> Optional[np.ndarray]:
    """Exact optimum by dynamic programming over classes; None if the frontier outgrows
    ``limit``. State: (fast load F, slow load S, fetches n); a state is dropped when
    another with the same n has F and S no larger, or when F or S already exceeds
    ``bound`` (a feasible makespan, e.g. the greedy one: loads only grow).
    Back-pointers rebuild the choice."""
    F = np.zeros(1)
    S = np.zeros(1)
    N = np.zeros(1, dtype=np.int64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for j in range(size.size):
        ys = np.arange(int(size[j]) + 1)
        parent = np.repeat(np.arange(F.size), ys.size)
        y = np.tile(ys, F.size)
        F = F[parent] + y * fast_cost[j]
        S = S[parent] + (size[j] - y) * slow_cost[j]
        N = N[parent] + (y if fetched[j] else 0)
        order = np.lexsort((S, F, N))
        order = order[(N[order] <= cap) & (F[order] <= bound) & (S[order] <= bound)]
        Ss, Ns = S[order], N[order]
        new_group = np.r_[True, Ns[1:] != Ns[:-1]]
        # running minimum of S within each fetch-count group, excluding the point itself
        prev = np.r_[np.inf, Ss[:-1]]
        prev[new_group] = np.inf
        group_id = np.cumsum(new_group) - 1
        offset = group_id * 1e9                  # separate groups for one global accumulate
        run_min = np.minimum.accumulate(prev - offset) + offset
        keep = order[Ss < run_min - 1e-15]
        F, S, N = F[keep], S[keep], N[keep]
        back.append((parent[keep], y[keep]))
        if F.size > limit:
            return None
    best = int(np.argmin(np.maximum(F, S)))
    choice = np.zeros(size.size)
    for j in range(size.size - 1, -1, -1):
        parent, y = back[j]
        choice[j] = y[best]
        best = int(parent[best])
    return choice


def balance(d: LayerDemand, profile: DeviceProfile, expert_bytes: int, free_slots: int,
            transfer_budget: float = float("inf"), milp_time_limit: float = 0.005,
            frontier_limit: int = FRONTIER_LIMIT, enumerate_limit: int = ENUMERATE_LIMIT,
            solve_worth: float = 0.0, parallel: bool = True) -> Assignment:
    """``solve_worth``: seconds an exact solve is worth spending; when the greedy makespan
    is within that of a lower bound, no solve could gain more than it costs, and the
    greedy assignment is taken (path ``bound``). ``parallel`` False: the lanes run one
    after the other, the layer takes their sum, and each expert simply goes where it is
    cheaper (path ``inline``; ties keep a resident expert fast)."""
    t0 = time.perf_counter()
    if d.experts.size == 0:
        return Assignment((), (), (), 0.0, "trivial", time.perf_counter() - t0)
    keys, members = _classes(d)
    size = np.array([len(members[k]) for k in keys], dtype=np.float64)
    fast_cost, slow_cost, fetched, xfer = _costs(keys, profile, expert_bytes)
    one = profile.transfer(expert_bytes)
    cap = int(free_slots) if not np.isfinite(transfer_budget) else int(min(free_slots, transfer_budget // one + 1e-9))
    cap = max(cap, 0)
    if not parallel:
        return _assignment(d, keys, members, _inline(size, fast_cost, slow_cost, fetched, cap), size, fast_cost,
                           slow_cost, "inline", t0)
    greedy = _greedy(size, fast_cost, slow_cost, fetched, xfer, cap, transfer_budget)
    if solve_worth > 0 and _span(greedy, size, fast_cost, slow_cost) - _lower_bound(size, fast_cost, slow_cost) \
            <= solve_worth:
        return _assignment(d, keys, members, greedy, size, fast_cost, slow_cost, "bound", t0)
    if float(np.prod(size + 1)) <= enumerate_limit:
        y = _enumerate(size, fast_cost, slow_cost, fetched, cap)
    else:
        bound = max(float(greedy @ fast_cost), float((size - greedy) @ slow_cost)) * (1 + 1e-12) + 1e-15
        y = _frontier(size, fast_cost, slow_cost, fetched, cap, frontier_limit, bound)
    path = "exact"
    if y is None:
        y = _milp(size, fast_cost, slow_cost, fetched, xfer, cap, transfer_budget, milp_time_limit)
        path = "milp"
        if y is None:
            y, path = greedy, "greedy"
    return _assignment(d, keys, members, y, size, fast_cost, slow_cost, path, t0)


def _span(y, size, fast_cost, slow_cost) -> float:
    return max(float(y @ fast_cost), float((size - y) @ slow_cost))


def _lower_bound(size, fast_cost, slow_cost) -> float:
    """No assignment beats this: each unit runs at its cheaper cost, on two lanes at best."""
    cheaper = np.minimum(fast_cost, slow_cost)
    return max(float(size @ cheaper) / 2, float(cheaper[size > 0].max(initial=0.0)))


def _assignment(d: LayerDemand, keys, members, y, size, fast_cost, slow_cost, path: str, t0: float) -> Assignment:
    """Expert ids per lane from the per-class counts ``y`` (a class's first members go fast)."""
    fast_ids, slow_ids, fetch_ids = [], [], []
    for j, k in enumerate(keys):
        take = int(round(y[j]))
        for rank, i in enumerate(members[k]):
            e = int(d.experts[i])
            if rank < take:
                fast_ids.append(e)
                if not k[1]:
                    fetch_ids.append(e)
            else:
                slow_ids.append(e)
    return Assignment(tuple(sorted(fast_ids)), tuple(sorted(slow_ids)), tuple(sorted(fetch_ids)),
                      _span(y, size, fast_cost, slow_cost), path, time.perf_counter() - t0)


def _milp(size, fast_cost, slow_cost, fetched, xfer, free_slots, transfer_budget, time_limit) -> Optional[np.ndarray]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    j = size.size
    c = np.zeros(j + 1)
    c[-1] = 1.0                                                  # minimise M
    rows, lo, hi = [], [], []
    rows.append(np.r_[fast_cost, -1.0]); lo.append(-np.inf); hi.append(0.0)                  # fast <= M
    rows.append(np.r_[-slow_cost, -1.0]); lo.append(-np.inf); hi.append(-(size @ slow_cost))  # slow <= M
    rows.append(np.r_[fetched.astype(float), 0.0]); lo.append(-np.inf); hi.append(float(free_slots))
    if np.isfinite(transfer_budget):
        rows.append(np.r_[xfer, 0.0]); lo.append(-np.inf); hi.append(transfer_budget)
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.r_[np.ones(j), 0.0], bounds=Bounds(np.r_[np.zeros(j), 0.0], np.r_[size, np.inf]),
               options={"time_limit": time_limit, "presolve": True})
    if res.x is None:
        return None
    return np.clip(np.round(res.x[:j]), 0, size)


def _greedy(size, fast_cost, slow_cost, fetched, xfer, cap, transfer_budget) -> np.ndarray:
    """Start all slow; move units to the fast lane in order of slow/fast cost ratio while
    that does not raise the makespan and the fetch cap holds. Scalar arithmetic: J is small."""
    n = size.size
    y = [0] * n
    sz, fc, sc, fe = size.tolist(), fast_cost.tolist(), slow_cost.tolist(), fetched.tolist()
    fast, slow = 0.0, float(np.dot(size, slow_cost))
    left = cap
    for j in sorted(range(n), key=lambda j: -(sc[j] / fc[j]) if fc[j] > 0 else -math.inf):    # free fast work first
        while y[j] < sz[j]:
            if fe[j] and left < 1:
                break
            nf, ns = fast + fc[j], slow - sc[j]
            if max(nf, ns) > max(fast, slow):
                break
            y[j] += 1
            fast, slow = nf, ns
            if fe[j]:
                left -= 1
    return np.array(y, dtype=np.float64)


def _inline(size, fast_cost, slow_cost, fetched, cap) -> np.ndarray:
    """Lanes in sequence: a class goes fast where that is cheaper (a tie keeps a resident
    class fast), the fetches with the largest saving first, up to the cap."""
    y = np.zeros(size.size)
    left = cap
    for j in np.argsort(fast_cost - slow_cost, kind="stable"):
        if fast_cost[j] > slow_cost[j] or (fast_cost[j] == slow_cost[j] and fetched[j]):
            continue
        take = size[j] if not fetched[j] else min(size[j], left)
        y[j] = take
        if fetched[j]:
            left -= int(take)
    return y


def _enumerate(size, fast_cost, slow_cost, fetched, cap) -> np.ndarray:
    """Every class combination at once (small products only)."""
    grid = np.indices(tuple(int(c) + 1 for c in size)).reshape(size.size, -1).T.astype(np.float64)   # [C, J]
    span = np.maximum(grid @ fast_cost, (size - grid) @ slow_cost)
    span[grid @ fetched.astype(np.float64) > cap] = np.inf
    return grid[int(np.argmin(span))]


def brute_force(d: LayerDemand, profile: DeviceProfile, expert_bytes: int, free_slots: int,
                transfer_budget: float = float("inf")) -> float:
    """Optimal makespan over all 2^N per-expert choices (for tests; N small)."""
    best = np.inf
    n = d.experts.size
    for bits in itertools.product((0, 1), repeat=n):
        x = np.array(bits, dtype=bool)
        fetch = x & ~d.resident
        if fetch.sum() > free_slots:
            continue
        xfer = fetch.sum() * profile.transfer(expert_bytes)
        if xfer > transfer_budget + 1e-12:
            continue
        fast = profile.fast(d.tokens[x]).sum() + xfer
        slow = profile.slow(d.tokens[~x]).sum()
        best = min(best, max(fast, slow))
    return float(best)
