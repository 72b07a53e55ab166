"""Token selection: greedy, or sampling with temperature, top-k and top-p; and the check
that logits are finite before any of it. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import BundleError, ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0     # 0: greedy
    top_k: int = 0               # 0: no top-k filter
    top_p: float = 1.0           # 1: no nucleus filter
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature):
            raise ConfigError(f"temperature {self.temperature} is not a finite number; use 0 for greedy or a value > 0")
        if self.temperature < 0:
            raise ConfigError(f"temperature {self.temperature} is negative; use 0 for greedy or a value > 0")
        if self.seed is not None and not 0 <= self.seed < 2 ** 64:
            raise ConfigError(f"seed {self.seed} is outside 0..2**64-1; use a non-negative integer")
        if self.top_k < 0:
            raise ConfigError(f"top-k {self.top_k} is negative; use 0 to disable it")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p {self.top_p} is outside (0, 1]; use 1 to disable it")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """[V] logits -> [V] the distribution sampled from (after temperature, top-k, top-p)."""
    z = logits.astype(np.float64) / cfg.temperature
    if 0 < cfg.top_k < z.size:
        kth = np.partition(z, -cfg.top_k)[-cfg.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = cum - p[order] < cfg.top_p          # smallest prefix whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from the (possibly unnormalised) distribution p [V]."""
    cdf = np.cumsum(p, dtype=np.float64)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), p.size - 1))


def select(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    if cfg.greedy:
        return int(np.argmax(logits))
    return sample(probabilities(logits, cfg), rng)


def check_finite(logits: np.ndarray, model: str, position: int) -> None:
    """Non-finite logits come from corrupt weights; stop rather than emit garbage.
    (max and min propagate NaN and catch +-inf in two cheap reductions.)"""
    if not (np.isfinite(logits.max()) and np.isfinite(logits.min())):
        raise BundleError(f"the {model} produced non-finite logits (NaN or Inf) at position {position}; a weight file "
                          "is corrupt: find it with spac-run --verify (or spac-export inspect --verify) and re-export")
