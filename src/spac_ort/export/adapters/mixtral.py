"""Mixtral: ``block_sparse_moe`` with experts ``w1`` (gate), ``w3`` (up), ``w2`` (down);
top-k weights always renormalised."""

from __future__ import annotations

from ...manifest import Family
from ..config import ModelSpec, QKNorm, build_spec
from .base import Adapter, register


@register("mixtral")
class MixtralAdapter(Adapter):
    moe_prefixes = ("block_sparse_moe", "mlp")
    expert_names = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))

    def build_spec(self) -> ModelSpec:
        window = self.cfg.get("sliding_window")
        return build_spec(self.cfg, Family.MIXTRAL, qk_norm=QKNorm.NONE, norm_topk_prob=True,
                          kinds=None, sliding_window=int(window) if window is not None else None)
