"""OLMoE: RMSNorm on the full q and k projections (before the head split), optional
``clip_qkv``."""

from __future__ import annotations

from ...manifest import Family, LayerKind
from ..config import ModelSpec, QKNorm, build_spec, first
from .base import Adapter, register


@register("olmoe")
class OlmoeAdapter(Adapter):
    def build_spec(self) -> ModelSpec:
        n = int(first(self.cfg, "num_hidden_layers"))
        return build_spec(self.cfg, Family.OLMOE, qk_norm=QKNorm.FULL,
                          norm_topk_prob=bool(self.cfg.get("norm_topk_prob", False)),
                          kinds=tuple([LayerKind.MOE] * n))
