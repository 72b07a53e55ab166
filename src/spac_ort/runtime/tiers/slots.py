"""The fast tier's slot table: which expert sits in which slot, loading state, pins.

Protocol (all under one lock, safe from any thread):

    pin(keys)      -> the keys that are READY, now pinned (their slots cannot be claimed)
    claim(key, rank, floor) -> a slot for `key`, marked LOADING: an empty slot, else the
                      unpinned READY slot whose occupant ranks lowest (and below `floor`);
                      None if every candidate is pinned or ranks higher
    commit(slot) / abort(slot)   LOADING -> READY / EMPTY
    unpin(keys)

A slot is never handed to a new expert while a reader holds a pin on it: eviction waits
for the consumer by construction (the reader pins before it runs and unpins after).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Optional, Union

import numpy as np

from ..routing import Key


class SlotState(str, Enum):
    EMPTY = "empty"
    LOADING = "loading"
    READY = "ready"


@dataclass
class Slot:
    key: Optional[Key] = None
    state: SlotState = SlotState.EMPTY
    pins: int = 0
    last_use: int = 0


@dataclass
class SlotCounters:
    claims: int = 0
    evictions: int = 0
    commits: int = 0
    aborts: int = 0


Rank = Union[Callable[[Key], float], np.ndarray]     # a function of the expert, or an [L, E] array
_EMPTY, _LOADING, _READY = 0, 1, 2
_STATES = (SlotState.EMPTY, SlotState.LOADING, SlotState.READY)


class SlotTable:
    """Slots as parallel arrays (layer, expert, state, pins, last use): a claim picks its
    victim with a few vector operations, whatever the number of slots."""

    def __init__(self, num_slots: int):
        self.layer = np.full(num_slots, -1, dtype=np.int64)
        self.expert = np.full(num_slots, -1, dtype=np.int64)
        self.state = np.zeros(num_slots, dtype=np.int8)
        self.pins = np.zeros(num_slots, dtype=np.int64)
        self.last_use = np.zeros(num_slots, dtype=np.int64)
        self.where: dict[Key, int] = {}
        self.lock = threading.Lock()
        self.counters = SlotCounters()
        self._clock = 0

    def __len__(self) -> int:
        return int(self.state.size)

    @property
    def slots(self) -> list[Slot]:
        """A snapshot of every slot (for checks and tests)."""
        with self.lock:
            return [Slot(None if st == _EMPTY else (int(l), int(e)), _STATES[st], int(p), int(u))
                    for l, e, st, p, u in zip(self.layer, self.expert, self.state, self.pins, self.last_use)]

    # ---- queries -----------------------------------------------------------------------
    def resident(self, key: Key) -> bool:
        with self.lock:
            i = self.where.get(key)
            return i is not None and self.state[i] == _READY

    def resident_mask(self, layer: int, experts: Iterable[int]) -> np.ndarray:
        """[N] bool: which of a layer's experts are READY."""
        with self.lock:
            where, state = self.where, self.state
            return np.array([(i := where.get((layer, int(e)))) is not None and state[i] == _READY for e in experts],
                            dtype=bool)

    def slots_of(self, layer: int, experts: Iterable[int]) -> np.ndarray:
        """The slots of a layer's experts (each must hold one), in one look-up."""
        with self.lock:
            return np.array([self.where[(layer, int(e))] for e in experts], dtype=np.int64)

    def slot_of(self, key: Key) -> Optional[int]:
        with self.lock:
            return self.where.get(key)

    def claimable(self) -> int:
        """Slots a new expert could take right now (empty or unpinned READY)."""
        with self.lock:
            return int(((self.state == _EMPTY) | ((self.state == _READY) & (self.pins == 0))).sum())

    def claimable_for(self, floors: np.ndarray, rank: np.ndarray, busy: Iterable[Key] = ()) -> int:
        """How many of a set of new experts (their eviction ``floors``) could get a slot
        right now: the empty slots, plus a matching of the rest to unpinned READY
        occupants ranking below their floor (lowest floors first take the lowest ranks).
        ``busy``: occupants about to be pinned, which no claim can take."""
        with self.lock:
            empty = int((self.state == _EMPTY).sum())
            if floors.size <= empty:
                return int(floors.size)
            free = (self.state == _READY) & (self.pins == 0)
            for key in busy:
                i = self.where.get(key)
                if i is not None:
                    free[i] = False
            cand = np.flatnonzero(free)
            ranks = np.sort(rank[self.layer[cand], self.expert[cand]].astype(np.float64))
        got, j = empty, 0
        for f in np.sort(floors)[empty:]:          # the lowest floors take the empty slots
            if j < ranks.size and ranks[j] < f:
                got, j = got + 1, j + 1
        return got

    # ---- readers -----------------------------------------------------------------------
    def pin(self, keys: Iterable[Key]) -> list[Key]:
        with self.lock:
            self._clock += 1
            got = []
            for key in keys:
                i = self.where.get(key)
                if i is not None and self.state[i] == _READY:
                    self.pins[i] += 1
                    self.last_use[i] = self._clock
                    got.append(key)
            return got

    def unpin(self, keys: Iterable[Key]) -> None:
        with self.lock:
            for key in keys:
                i = self.where[key]
                if self.pins[i] <= 0:
                    raise RuntimeError(f"unpin of unpinned expert {key}")
                self.pins[i] -= 1

    # ---- writers -----------------------------------------------------------------------
    def claim(self, key: Key, rank: Rank, floor: float = float("inf"), pin: bool = False) -> Optional[int]:
        """Reserve a slot for ``key``. Victims are unpinned READY slots, lowest rank first
        (ties: least recently used, then the lowest (layer, expert)); only occupants ranking strictly below ``floor`` may
        be evicted. With ``pin`` the slot starts pinned (for a reader waiting on it)."""
        got = self.claim_evicting(key, rank, floor, pin)
        return got[0] if got else None

    def claim_evicting(self, key: Key, rank: Rank, floor: float = float("inf"),
                       pin: bool = False) -> Optional[tuple[int, Optional[Key]]]:
        """`claim`, also returning the evicted expert (None when the slot was empty)."""
        with self.lock:
            if key in self.where:
                return None
            best = self._victim(rank, floor)
            if best is None:
                return None
            victim = None
            if self.state[best] == _READY:
                victim = (int(self.layer[best]), int(self.expert[best]))
                del self.where[victim]
                self.counters.evictions += 1
            self._clock += 1
            self.layer[best], self.expert[best] = key
            self.state[best], self.pins[best], self.last_use[best] = _LOADING, 1 if pin else 0, self._clock
            self.where[key] = best
            self.counters.claims += 1
            return best, victim

    def _victim(self, rank: Rank, floor: float) -> Optional[int]:
        empty = np.flatnonzero(self.state == _EMPTY)
        if empty.size:
            return int(empty[0])
        cand = np.flatnonzero((self.state == _READY) & (self.pins == 0))
        if isinstance(rank, np.ndarray):
            r = rank[self.layer[cand], self.expert[cand]].astype(np.float64)
        else:
            r = np.array([rank((int(self.layer[i]), int(self.expert[i]))) for i in cand], dtype=np.float64)
        ok = r < floor
        cand, r = cand[ok], r[ok]
        if not cand.size:
            return None
        return int(cand[np.lexsort((self.expert[cand], self.layer[cand], self.last_use[cand], r))[0]])

    def commit(self, slot: int) -> None:
        with self.lock:
            if self.state[slot] != _LOADING:
                raise RuntimeError(f"commit of slot {slot} in state {_STATES[self.state[slot]].value}")
            self.state[slot] = _READY
            self.counters.commits += 1

    def abort(self, slot: int) -> None:
        with self.lock:
            if self.state[slot] != _LOADING:
                raise RuntimeError(f"abort of slot {slot} in state {_STATES[self.state[slot]].value}")
            del self.where[(int(self.layer[slot]), int(self.expert[slot]))]
            self.layer[slot] = self.expert[slot] = -1
            self.state[slot], self.pins[slot] = _EMPTY, 0
            self.counters.aborts += 1

    # ---- invariants --------------------------------------------------------------------
    def check(self) -> None:
        """Raise AssertionError if the table is inconsistent (also under ``python -O``)."""
        with self.lock:
            problems = [f"slot {i} holds {(int(self.layer[i]), int(self.expert[i]))}, map says {key}"
                        for key, i in self.where.items() if (int(self.layer[i]), int(self.expert[i])) != key]
            for i in range(len(self)):
                empty_ok = self.layer[i] == -1 and self.pins[i] == 0
                full_ok = self.where.get((int(self.layer[i]), int(self.expert[i]))) == i
                if self.pins[i] < 0 or not (empty_ok if self.state[i] == _EMPTY else full_ok):
                    problems.append(f"slot {i}: state {self.state[i]}, pins {self.pins[i]}")
        if problems:
            raise AssertionError("; ".join(problems))
