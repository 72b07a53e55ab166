"""Speculative Utility Estimator: per (layer, expert) utility levels from verify-window
expert counts, with inertia. Pure functions over numpy arrays.

Legend: L layers, E experts per layer, T tokens in the window (K+1).

Three modes:
- ``fixed``: the authors' rule on raw counts c: up one level when c - u >= theta_up,
  down one level when u - c >= theta_down (defaults U=5, theta_up=5, theta_down=1).
- ``scaled``: counts are first mapped to the level range, c' = c * U / T, so a window of
  any K can reach every level; thresholds are then in level units.
- ``adaptive``: level boundaries follow running count statistics: per layer, a decaying
  histogram of the non-zero counts seen; the target level of a count is the number of
  boundaries it reaches, the boundaries being the quantiles i/(U+1) of that histogram made
  strictly increasing; the level moves one step toward the target (up when
  target - u >= theta_up, down when u - target >= theta_down; both 1 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Optional

import numpy as np

from ...errors import ConfigError


class UtilityMode(str, Enum):
    FIXED = "fixed"
    SCALED = "scaled"
    ADAPTIVE = "adaptive"


@dataclass(frozen=True)
class UtilityConfig:
    mode: UtilityMode = UtilityMode.FIXED
    levels: int = 5                 # U
    theta_up: float = 5.0
    theta_down: float = 1.0
    decay: float = 0.95             # adaptive: histogram decay per window

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ConfigError(f"utility levels {self.levels} must be at least 1")
        if self.theta_up <= 0 or self.theta_down <= 0:
            raise ConfigError("utility thresholds theta_up and theta_down must be positive")
        if not 0 < self.decay < 1:
            raise ConfigError(f"utility decay {self.decay} must be in (0, 1)")

    @classmethod
    def for_mode(cls, mode: UtilityMode | str) -> "UtilityConfig":
        """Defaults per mode: the authors' constants for fixed, level units otherwise."""
        mode = UtilityMode(mode)
        if mode is UtilityMode.FIXED:
            return cls(mode)
        return cls(mode, theta_up=1.0, theta_down=1.0)


@dataclass(frozen=True)
class UtilityState:
    levels: np.ndarray                      # [L, E] int in 0..U
    histogram: Optional[np.ndarray] = field(default=None)   # adaptive: [L, C+1] decayed count frequencies

    @classmethod
    def zeros(cls, num_layers: int, num_experts: int) -> "UtilityState":
        return cls(np.zeros((num_layers, num_experts), dtype=np.int64))


def _inertia(levels: np.ndarray, target: np.ndarray, up: float, down: float, top: int) -> np.ndarray:
    step = np.where(target - levels >= up, 1, np.where(levels - target >= down, -1, 0))
    return np.clip(levels + step, 0, top)


def boundaries(histogram: np.ndarray, levels: int) -> np.ndarray:
    """[L, U] count boundaries: quantiles i/(U+1), i = 1..U, of each layer's non-zero counts."""
    h = histogram[:, 1:]                                              # counts >= 1
    total = h.sum(axis=1, keepdims=True)
    cdf = np.cumsum(h, axis=1) / np.where(total > 0, total, 1)
    qs = np.arange(1, levels + 1) / (levels + 1)                      # [U]
    # smallest count whose cdf reaches q, as a count value (index + 1)
    idx = (cdf[:, None, :] < qs[None, :, None]).sum(axis=2)           # [L, U]
    step = np.arange(levels)[None, :]
    b = np.maximum.accumulate(idx + 1 - step, axis=1) + step           # strictly increasing, >= 1
    return np.where(total > 0, b, step + 1).astype(np.float64)         # before any data: 1..U


def update(state: UtilityState, counts: np.ndarray, window: int, cfg: UtilityConfig) -> UtilityState:
    """New levels after one verify window. counts: [L, E] tokens routed per expert;
    window: T, the number of tokens verified."""
    u = cfg.levels
    if cfg.mode is UtilityMode.FIXED:
        return replace(state, levels=_inertia(state.levels, counts, cfg.theta_up, cfg.theta_down, u))
    if cfg.mode is UtilityMode.SCALED:
        scaled = counts * (u / max(window, 1))
        return replace(state, levels=_inertia(state.levels, scaled, cfg.theta_up, cfg.theta_down, u))
    # adaptive
    width = int(counts.max(initial=0)) + 1
    hist = state.histogram
    if hist is None:
        hist = np.zeros((counts.shape[0], width))
    if hist.shape[1] < width:
        hist = np.pad(hist, ((0, 0), (0, width - hist.shape[1])))
    seen = np.zeros_like(hist)
    for layer in range(counts.shape[0]):
        seen[layer] = np.bincount(counts[layer], minlength=hist.shape[1])[: hist.shape[1]]
    hist = hist * cfg.decay + seen
    b = boundaries(hist, u)                                           # [L, U]
    target = (counts[:, :, None] >= b[:, None, :]).sum(axis=2)         # [L, E] in 0..U
    target = np.where(counts > 0, target, 0)
    levels = _inertia(state.levels, target, cfg.theta_up, cfg.theta_down, u)
    return UtilityState(levels, hist)


def prefetch_order(levels: np.ndarray, counts: Optional[np.ndarray] = None) -> list[tuple[int, int]]:
    """(layer, expert) with level > 0, highest level first; ties by latest count, then
    layer and expert. This is also the reverse of the eviction order."""
    layer_idx, expert_idx = np.nonzero(levels > 0)
    lv = levels[layer_idx, expert_idx]
    recent = counts[layer_idx, expert_idx] if counts is not None else np.zeros_like(lv)
    order = np.lexsort((expert_idx, layer_idx, -recent, -lv))
    return [(int(layer_idx[i]), int(expert_idx[i])) for i in order]


def deadline_order(order: list[tuple[int, int]], slots: int, deadline: dict[int, float]) -> list[tuple[int, int]]:
    """What to prefetch, in which order: the ``slots`` most wanted experts of a prefetch
    ``order`` (the set the tier can hold; an expert further down could only displace one
    that ranks lower still, i.e. churn), earliest deadline first (``deadline[layer]``: when
    the layer's experts are needed; ties keep the wanted order)."""
    return sorted(order[:slots], key=lambda k: deadline.get(k[0], 0.0))
