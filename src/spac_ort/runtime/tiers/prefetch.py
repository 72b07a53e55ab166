"""Asynchronous prefetch into fast-tier slots, in the order the policy asked for.

`Prefetcher.submit(order, ranking)` replaces the queue with a new order (most wanted
first) and a ranking snapshot. One drain task at a time runs on the tier's shared
executor: for each key not resident it claims a slot whose occupant ranks strictly
below the key's floor (so prefetch and eviction follow the same order and never undo each
other; pinned slots are never taken), copies the expert's weights into it and commits.
Without an executor the same work happens inside `submit` (the ablation without overlap).

Protocol per key: claim -> load -> commit (abort on error); a reader only ever sees
READY slots it has pinned. With a ``gate`` (an event the tier clears while a layer's
on-demand fetches copy), the drain waits before each copy until the gate is set: a
fetch the running layer needs waits for at most the one prefetch copy already in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Optional, Sequence

from ..routing import Key
from ..spac.policies import Ranking
from .counters import TierCounters
from .slots import SlotTable

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self, table: SlotTable, load: Callable[[int, Key], None], counters: TierCounters,
                 executor: Optional[Executor] = None, gate: Optional[threading.Event] = None):
        self.table, self.load, self.counters = table, load, counters
        self.executor = executor
        self.gate = gate
        self._queue: deque[tuple[Key, float]] = deque()
        self._ranking: Optional[Ranking] = None
        self._cv = threading.Condition()
        self._running = False
        self._stop = False

    def submit(self, order: Sequence[Key], ranking: Ranking) -> None:
        now = time.perf_counter()
        if self.executor is None:
            for key in order:
                self._fetch(key, now, ranking)
            return
        with self._cv:
            self._queue = deque((k, now) for k in order)
            self._ranking = ranking
            if self._queue and not self._running and not self._stop:
                self._running = True
                self.executor.submit(self._drain)

    def _fetch(self, key: Key, t0: float, ranking: Ranking) -> None:
        if self.table.slot_of(key) is not None:
            return
        slot = self.table.claim(key, ranking.rank, floor=float(ranking.floor[key]))
        if slot is None:                    # every occupant it may evict ranks higher, or is pinned
            return
        try:
            self.load(slot, key)
        except BaseException:
            self.table.abort(slot)
            raise
        self.table.commit(slot)
        with self.counters.lock:
            self.counters.prefetched += 1
            self.counters.queue_delay_s.append(time.perf_counter() - t0)

    def _drain(self) -> None:
        while True:
            with self._cv:
                if not self._queue or self._stop:
                    self._running = False
                    self._cv.notify_all()
                    return
                key, t0 = self._queue.popleft()
                ranking = self._ranking
            if self.gate is not None:
                while not self.gate.wait(0.05) and not self._stop:
                    pass
                if self._stop:
                    continue                # the loop's check ends the drain
            try:
                self._fetch(key, t0, ranking)
            except Exception:   # a failed copy leaves the slot empty; the expert runs on CPU
                log.exception("prefetch of %s failed", key)

    def drain(self) -> None:
        """Wait until the queue is empty and no copy is in flight (tests, benchmarks)."""
        with self._cv:
            while self._running:
                self._cv.wait(timeout=0.1)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._queue.clear()
            while self._running:
                self._cv.wait(timeout=0.1)
