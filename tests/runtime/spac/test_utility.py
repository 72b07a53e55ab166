"""Utility estimator: every (level, count) transition against a direct implementation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spac_ort.errors import ConfigError
from spac_ort.runtime.spac.utility import (UtilityConfig, UtilityMode, UtilityState, boundaries,
                                      prefetch_order, update)


def _direct(u: int, c: float, up: float, down: float, top: int) -> int:
    if c - u >= up:
        return min(u + 1, top)
    if u - c >= down:
        return max(u - 1, 0)
    return u


@pytest.mark.parametrize("theta_up, theta_down", [(5, 1), (1, 1), (2, 3), (0.5, 0.5)])
def test_fixed_every_transition(theta_up, theta_down):
    cfg = UtilityConfig(UtilityMode.FIXED, levels=5, theta_up=theta_up, theta_down=theta_down)
    pairs = list(itertools.product(range(6), range(10)))
    levels = np.array([[u for u, _ in pairs]])
    counts = np.array([[c for _, c in pairs]])
    got = update(UtilityState(levels), counts, window=9, cfg=cfg).levels[0]
    assert got.tolist() == [_direct(u, c, theta_up, theta_down, 5) for u, c in pairs]


def test_fixed_defaults_are_the_authors_constants():
    cfg = UtilityConfig()
    assert (cfg.mode, cfg.levels, cfg.theta_up, cfg.theta_down) == (UtilityMode.FIXED, 5, 5.0, 1.0)
    # a window of 5 tokens all choosing an expert lifts it one level; 4 do not
    s = update(UtilityState.zeros(1, 3), np.array([[5, 4, 0]]), 5, cfg)
    assert s.levels.tolist() == [[1, 0, 0]]


@pytest.mark.parametrize("window", [2, 5, 9])
def test_scaled_maps_counts_to_level_range(window):
    cfg = UtilityConfig.for_mode("scaled")
    pairs = list(itertools.product(range(6), range(window + 1)))
    levels = np.array([[u for u, _ in pairs]])
    counts = np.array([[c for _, c in pairs]])
    got = update(UtilityState(levels), counts, window, cfg).levels[0]
    assert got.tolist() == [_direct(u, c * 5 / window, 1, 1, 5) for u, c in pairs]
    # a full window reaches the top level in U steps whatever K is
    s = UtilityState.zeros(1, 1)
    for _ in range(5):
        s = update(s, np.array([[window]]), window, cfg)
    assert s.levels[0, 0] == 5


def test_adaptive_boundaries_follow_count_statistics():
    # histogram of non-zero counts: mostly 1s, a few 2..4
    hist = np.array([[0.0, 80, 10, 6, 4]])
    b = boundaries(hist, levels=3)                 # quantiles 1/4, 2/4, 3/4 are all 1 -> made increasing
    assert b.tolist() == [[1, 2, 3]]
    hist = np.array([[0.0, 10, 10, 10, 10, 10, 10, 10, 10]])
    assert boundaries(hist, 3).tolist() == [[2, 4, 6]]
    hist = np.array([[0.0, 0, 10, 10, 80]])        # counts are mostly 4: a count of 3 is low here
    assert boundaries(hist, 3).tolist() == [[4, 5, 6]]
    assert boundaries(np.zeros((1, 5)), 3).tolist() == [[1, 2, 3]]     # no data yet


def test_adaptive_levels_rise_for_experts_that_stand_out():
    cfg = UtilityConfig.for_mode("adaptive")
    rng = np.random.default_rng(0)
    s = UtilityState.zeros(1, 16)
    for _ in range(30):
        counts = rng.integers(0, 2, (1, 16))
        counts[0, 3] = 5                           # expert 3 is always heavily used
        s = update(s, counts, 5, cfg)
    assert s.levels[0, 3] == s.levels.max() and s.levels[0, 3] >= 3
    assert (np.delete(s.levels[0], 3) <= 1).all()
    assert s.histogram is not None and s.histogram.shape[0] == 1


def test_prefetch_order():
    levels = np.array([[0, 3, 1], [5, 0, 3]])
    counts = np.array([[0, 2, 1], [4, 0, 5]])
    assert prefetch_order(levels, counts) == [(1, 0), (1, 2), (0, 1), (0, 2)]


def test_invalid_config():
    with pytest.raises(ConfigError):
        UtilityConfig(levels=0)
    with pytest.raises(ConfigError):
        UtilityConfig(theta_up=0)
