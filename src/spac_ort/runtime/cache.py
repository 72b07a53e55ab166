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
from typing import Callable, Iterable, Optional

Key = tuple[int, int]          # (layer, expert)


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
class CacheCounters:
    claims: int = 0
    evictions: int = 0
    commits: int = 0
    aborts: int = 0


class SlotTable:
    def __init__(self, num_slots: int):
        self.slots = [Slot() for _ in range(num_slots)]
        self.where: dict[Key, int] = {}
        self.lock = threading.Lock()
        self.counters = CacheCounters()
        self._clock = 0

    def __len__(self) -> int:
        return len(self.slots)

    # ---- queries -----------------------------------------------------------------------
    def resident(self, key: Key) -> bool:
        with self.lock:
            i = self.where.get(key)
            return i is not None and self.slots[i].state is SlotState.READY

    def resident_keys(self) -> list[Key]:
        with self.lock:
            return [s.key for s in self.slots if s.state is SlotState.READY and s.key is not None]

    def slot_of(self, key: Key) -> Optional[int]:
        with self.lock:
            return self.where.get(key)

    def claimable(self) -> int:
        """Slots a new expert could take right now (empty or unpinned READY)."""
        with self.lock:
            return sum(1 for s in self.slots if s.state is SlotState.EMPTY or
                       (s.state is SlotState.READY and s.pins == 0))

    # ---- readers -----------------------------------------------------------------------
    def pin(self, keys: Iterable[Key]) -> list[Key]:
        with self.lock:
            self._clock += 1
            got = []
            for key in keys:
                i = self.where.get(key)
                if i is not None and self.slots[i].state is SlotState.READY:
                    self.slots[i].pins += 1
                    self.slots[i].last_use = self._clock
                    got.append(key)
            return got

    def unpin(self, keys: Iterable[Key]) -> None:
        with self.lock:
            for key in keys:
                s = self.slots[self.where[key]]
                assert s.pins > 0, f"unpin of unpinned {key}"
                s.pins -= 1

    # ---- writers -----------------------------------------------------------------------
    def claim(self, key: Key, rank: Callable[[Key], float], floor: float = float("inf"),
              pin: bool = False) -> Optional[int]:
        """Reserve a slot for ``key``. Victims are unpinned READY slots, lowest rank first
        (ties: least recently used); only occupants ranking strictly below ``floor`` may
        be evicted. With ``pin`` the slot starts pinned (for a reader waiting on it)."""
        got = self.claim_evicting(key, rank, floor, pin)
        return got[0] if got else None

    def claim_evicting(self, key: Key, rank: Callable[[Key], float], floor: float = float("inf"),
                       pin: bool = False) -> Optional[tuple[int, Optional[Key]]]:
        """`claim`, also returning the evicted expert (None when the slot was empty)."""
        with self.lock:
            if key in self.where:
                return None
            best, best_rank = None, None
            for i, s in enumerate(self.slots):
                if s.state is SlotState.EMPTY:
                    best, best_rank = i, (float("-inf"), 0)
                    break
                if s.state is SlotState.READY and s.pins == 0:
                    r = (rank(s.key), s.last_use)
                    if r[0] < floor and (best_rank is None or r < best_rank):
                        best, best_rank = i, r
            if best is None:
                return None
            s = self.slots[best]
            victim = s.key
            if victim is not None:
                del self.where[victim]
                self.counters.evictions += 1
            s.key, s.state, s.pins = key, SlotState.LOADING, 1 if pin else 0
            self._clock += 1
            s.last_use = self._clock
            self.where[key] = best
            self.counters.claims += 1
            return best, victim

    def commit(self, slot: int) -> None:
        with self.lock:
            s = self.slots[slot]
            assert s.state is SlotState.LOADING
            s.state = SlotState.READY
            self.counters.commits += 1

    def abort(self, slot: int) -> None:
        with self.lock:
            s = self.slots[slot]
            assert s.state is SlotState.LOADING
            del self.where[s.key]
            s.key, s.state, s.pins = None, SlotState.EMPTY, 0
            self.counters.aborts += 1

    # ---- invariants --------------------------------------------------------------------
    def check(self) -> None:
        """Raise AssertionError if the table is inconsistent."""
        with self.lock:
            for key, i in self.where.items():
                assert self.slots[i].key == key, f"slot {i} holds {self.slots[i].key}, map says {key}"
            for i, s in enumerate(self.slots):
                assert s.pins >= 0
                if s.state is SlotState.EMPTY:
                    assert s.key is None and s.pins == 0
                else:
                    assert s.key is not None and self.where.get(s.key) == i
