"""Asynchronous prefetch into fast-tier slots, in utility order.

`Prefetcher.submit(order, rank)` replaces the queue with a new utility order (highest
first). A background worker takes keys in that order and, for each one not resident,
claims a slot whose occupant ranks strictly lower (so prefetch and eviction follow the
same utility order and never undo each other; pinned slots are never taken), copies the
expert's weights into it and commits. ``synchronous=True`` does the same work inside
`submit` (the ablation without overlap).

Iterator protocol of the worker, per key: claim -> load -> commit (or abort on error);
a reader only ever sees READY slots it has pinned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from .cache import Key, SlotTable

log = logging.getLogger(__name__)


@dataclass
class PrefetchCounters:
    fetched: int = 0
    skipped: int = 0             # no slot could be claimed (all pinned or higher ranked)
    queue_delay_s: list[float] = field(default_factory=list)


class Prefetcher:
    def __init__(self, table: SlotTable, load: Callable[[int, Key], None], synchronous: bool = False,
                 limit_per_submit: Optional[int] = None):
        self.table, self.load = table, load
        self.synchronous = synchronous
        self.limit = limit_per_submit
        self.counters = PrefetchCounters()
        self._queue: deque[tuple[Key, float]] = deque()
        self._rank: Callable[[Key], float] = lambda k: 0.0
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread: Optional[threading.Thread] = None
        if not synchronous:
            self._thread = threading.Thread(target=self._worker, name="spac-prefetch", daemon=True)
            self._thread.start()

    def submit(self, order: list[Key], rank: Callable[[Key], float]) -> None:
        now = time.perf_counter()
        items = [(k, now) for k in (order if self.limit is None else order[: self.limit])]
        if self.synchronous:
            for key, t0 in items:
                self._fetch(key, t0, rank)
            return
        with self._cv:
            self._queue = deque(items)
            self._rank = rank
            self._cv.notify()

    def _fetch(self, key: Key, t0: float, rank: Callable[[Key], float]) -> None:
        if self.table.slot_of(key) is not None:
            return
        slot = self.table.claim(key, rank, floor=rank(key))
        if slot is None:
            self.counters.skipped += 1
            return
        try:
            self.load(slot, key)
        except BaseException:
            self.table.abort(slot)
            raise
        self.table.commit(slot)
        self.counters.fetched += 1
        self.counters.queue_delay_s.append(time.perf_counter() - t0)

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait()
                if self._stop:
                    self._busy = False
                    self._cv.notify_all()
                    return
                key, t0 = self._queue.popleft()
                rank = self._rank
                self._busy = True
            try:
                self._fetch(key, t0, rank)
            except Exception:   # a failed copy leaves the slot empty; the expert runs on CPU
                log.exception("prefetch of %s failed", key)

    def drain(self) -> None:
        """Wait until the queue is empty and the worker idle (tests, benchmarks)."""
        if self.synchronous:
            return
        with self._cv:
            while self._queue or self._busy:
                self._cv.wait(timeout=0.1)

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()
        self._thread = None
