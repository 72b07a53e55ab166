"""The prefetcher waits for its gate (a layer's on-demand copies go first), and the
calibration's lane calls walk over distinct entries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from spac_ort.runtime.calibrate import _rotating
from spac_ort.runtime.spac.policies import Ranking
from spac_ort.runtime.tiers.counters import TierCounters
from spac_ort.runtime.tiers.prefetch import Prefetcher
from spac_ort.runtime.tiers.slots import SlotTable


def test_prefetch_waits_for_the_gate():
    table, loaded = SlotTable(4), []
    gate = threading.Event()                       # cleared: an on-demand fetch is copying
    with ThreadPoolExecutor(max_workers=1) as pool:
        pre = Prefetcher(table, lambda slot, key: loaded.append(key), TierCounters(), pool, gate=gate)
        pre.submit([(0, 1), (0, 2)], Ranking.flat(1, 4))
        time.sleep(0.2)
        assert loaded == []                        # nothing copied while the gate is closed
        gate.set()
        pre.drain()
        pre.close()
    assert loaded == [(0, 1), (0, 2)]
    assert table.slot_of((0, 1)) is not None and table.slot_of((0, 2)) is not None


def test_prefetch_close_does_not_hang_on_a_closed_gate():
    table, gate, loaded = SlotTable(2), threading.Event(), []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pre = Prefetcher(table, lambda slot, key: loaded.append(key), TierCounters(), pool, gate=gate)
        pre.submit([(0, 0)], Ranking.flat(1, 2))
        t0 = time.perf_counter()
        pre.close()
        assert time.perf_counter() - t0 < 2.0
    assert loaded == [] and table.slot_of((0, 0)) is None     # closed before the gate opened: nothing copied


class _Lane:
    def __init__(self):
        self.calls = []

    def run(self, x, index, weights):  # noqa: ANN001
        assert index.shape == weights.shape == (x.shape[1], index.shape[1])
        self.calls.append(index[0].tolist())


def test_calibration_calls_rotate_over_the_pool():
    lane = _Lane()
    call = _rotating(lane, np.zeros((1, 3, 8), np.float32), width=4, pool=10)
    for _ in range(4):
        call()
    assert lane.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]
