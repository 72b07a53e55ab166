"""Qwen3-MoE and Qwen2-MoE (the latter with a sigmoid-gated shared expert)."""

from __future__ import annotations

from typing import Optional

import torch

from ...manifest import Family
from ..config import ModelSpec, QKNorm, build_spec, first
from ..weights import SwiGLUWeights
from .base import Adapter, register


@register("qwen3_moe")
class Qwen3MoeAdapter(Adapter):
    def build_spec(self) -> ModelSpec:
        return build_spec(self.cfg, Family.QWEN3_MOE, qk_norm=QKNorm.PER_HEAD,
                          norm_topk_prob=bool(self.cfg.get("norm_topk_prob", False)),
                          sliding_window=_window(self.cfg))


@register("qwen2_moe")
class Qwen2MoeAdapter(Adapter):
    def build_spec(self) -> ModelSpec:
        return build_spec(self.cfg, Family.QWEN2_MOE, qk_norm=QKNorm.NONE,
                          norm_topk_prob=bool(self.cfg.get("norm_topk_prob", False)),
                          shared_expert_intermediate=int(first(self.cfg, "shared_expert_intermediate_size")),
                          sliding_window=_window(self.cfg))

    def shared_expert(self, layer: int) -> tuple[SwiGLUWeights, Optional[torch.Tensor]]:
        p = f"{self.moe_prefix(layer)}.shared_expert"
        mlp = SwiGLUWeights(self.w.get(f"{p}.gate_proj.weight"), self.w.get(f"{p}.up_proj.weight"),
                            self.w.get(f"{p}.down_proj.weight"))
        return mlp, self.w.get(f"{p}_gate.weight")


def _window(cfg: dict) -> Optional[int]:
    if cfg.get("use_sliding_window") and cfg.get("sliding_window") is not None:
        return int(cfg["sliding_window"])
    return None
