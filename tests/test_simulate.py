"""The simulator's cost accounting on a hand-made trace."""

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.bench.simulate import SystemProfile, predict
from spac_ort.profile import DeviceProfile
from spac_ort.runtime.sensor import StepRecord
from spac_ort.runtime.spac.policies import TierView

L, E = 2, 4


def _trace():
    counts = np.zeros((L, E), np.int64)
    counts[:, :2] = 1                                   # every pass: experts 0 and 1 of each layer, one token each
    recs = [StepRecord(0, "prefill", 3, (), 0, (7,), counts * 3, {}, {})]
    recs += [StepRecord(i, "decode", 1, (), 0, (7,), counts, {}, {}) for i in range(1, 11)]
    return recs


def test_a_plain_trace_costs_what_the_model_says():
    device = DeviceProfile("d", 0.0, 1e-3, 0.0, 4e-3, 0.0, 1e9)        # an expert-token: 1 ms fast, 4 ms slow
    system = SystemProfile(device, 2e-3, 0.0, 0.0, 0.0, overlap=True)
    view = TierView((0, 1), L, E, 2, 0, 1000, device)
    cpu = predict(_trace(), "cpu", 0, view, system)
    # per pass: 2 ms outside the experts + 2 layers x 2 experts x 4 ms on the CPU
    assert cpu["tokens_per_s"] == pytest.approx(1 / (2e-3 + 2 * 2 * 4e-3))
    resident = predict(_trace(), "resident", L * E, view, system)
    assert resident["tokens_per_s"] == pytest.approx(1 / (2e-3 + 2 * 2 * 1e-3)) and resident["hit_rate"] == 1.0
    inline = SystemProfile(device, 2e-3, 0.0, 0.0, 1e-4, overlap=False)
    assert predict(_trace(), "cpu", 0, view, inline)["tokens_per_s"] == pytest.approx(1 / (2e-3 + 16e-3 + 2 * 1e-4))
