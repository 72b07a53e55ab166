"""Drafts from the context: the tokens that followed the last earlier occurrence of the
sequence's final n-gram (prompt lookup). Free to propose: no model runs.

Pure: no ORT, no clocks. Text that repeats itself (code that restates names, lists,
quotes of the prompt, and the loops of a small model's greedy continuation) makes these
drafts right often; elsewhere there is usually no earlier occurrence, or a wrong one, and
the K controller stops using them.

    lookup = ContextLookup(n=3)
    drafts = lookup.propose(seq, k)      # up to k tokens; [] when the tail never occurred before

``seq`` must only grow between calls (the generator's committed sequence does); a shorter
or different sequence starts a fresh index.
"""

from __future__ import annotations

from typing import Sequence


class ContextLookup:
    """Index of n-grams to the position after their latest occurrence, kept up to date
    incrementally: each committed token is indexed once."""

    def __init__(self, n: int = 3):
        if n < 1:
            raise ValueError(f"lookup n-gram length {n} must be at least 1")
        self.n = n
        self._next: dict[tuple[int, ...], int] = {}    # n-gram -> index of the token after it
        self._indexed = 0                               # n-grams ending before this index are in
        self._head: tuple[int, ...] = ()                # the first tokens seen: a changed sequence resets

    def _sync(self, seq: Sequence[int]) -> None:
        n = self.n
        head = tuple(seq[:n])
        if head != self._head or len(seq) < self._indexed:
            self._next.clear()
            self._indexed, self._head = 0, head
        # an n-gram ending at i (exclusive) is followed by seq[i]: index it once seq[i] exists
        for end in range(max(self._indexed, n), len(seq)):
            self._next[tuple(seq[end - n:end])] = end
        self._indexed = max(self._indexed, len(seq))

    def propose(self, seq: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of ``seq``'s last
        n tokens; empty when there is none."""
        if k < 1 or len(seq) <= self.n:
            return []
        self._sync(seq)
        start = self._next.get(tuple(seq[-self.n:]))
        if start is None:
            return []
        return [int(t) for t in seq[start:start + k]]
