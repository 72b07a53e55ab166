"""DeepSeek-V2 and -V3: multi-head latent attention with a compressed KV cache, dense MLP in the
first ``first_k_dense_replace`` layers, ungated shared experts, softmax routing with
``greedy`` or ``group_limited_greedy`` top-k and ``routed_scaling_factor``.

Routing follows transformers' DeepseekV2MoEGate, which applies no renormalisation of the
top-k weights (``norm_topk_prob`` is not used by that model). DeepSeek-V3: sigmoid scores,
``noaux_tc`` grouped top-k on scores + ``e_score_correction_bias``, weights from the
unbiased scores, renormalised when ``norm_topk_prob``, times ``routed_scaling_factor``;
RoPE on interleaved pairs when ``rope_interleave`` (the default), else on halves.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import UnsupportedModelError
from ...manifest import Family, LayerKind, Routing, Scoring, TopkMethod
from ..config import ModelSpec, QKNorm, build_spec, first
from ..weights import MLASpec, MLAWeights, SwiGLUWeights
from .base import Adapter, register


@register("deepseek_v2")
class DeepseekV2Adapter(Adapter):
    family = Family.DEEPSEEK_V2
    scoring = Scoring.SOFTMAX
    topk_methods: tuple[str, ...] = ("greedy", "group_limited_greedy")     # the first is the default

    def renormalise(self) -> bool:
        return False            # transformers' DeepseekV2MoEGate never renormalises

    def routing(self) -> Routing:
        c = self.cfg
        method = c.get("topk_method", self.topk_methods[0])
        if method not in self.topk_methods:
            raise UnsupportedModelError(f"{self.family.value} topk_method '{method}' is not supported "
                                        f"({', '.join(self.topk_methods)})")
        return Routing(self.scoring, self.renormalise(), TopkMethod(method), int(c.get("n_group") or 1),
                       int(c.get("topk_group") or 1), float(c.get("routed_scaling_factor") or 1.0))

    def build_spec(self) -> ModelSpec:
        c = self.cfg
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise UnsupportedModelError(f"{self.family.value} with attention_bias or mlp_bias is not supported")
        self.mla = MLASpec(int(first(c, "kv_lora_rank")), c.get("q_lora_rank"), int(first(c, "qk_nope_head_dim")),
                           int(first(c, "qk_rope_head_dim")), int(first(c, "v_head_dim")),
                           bool(c.get("rope_interleave", True)) if self.family is Family.DEEPSEEK_V3 else True)
        n = int(first(c, "num_hidden_layers"))
        dense = int(c.get("first_k_dense_replace") or 0)
        freq = int(c.get("moe_layer_freq") or 1)
        kinds = tuple(LayerKind.MOE if i >= dense and i % freq == 0 else LayerKind.DENSE for i in range(n))
        shared = int(c.get("n_shared_experts") or 0) * int(first(c, "moe_intermediate_size"))
        routing = self.routing()
        return build_spec(dict(c, num_experts=c.get("n_routed_experts")), self.family, qk_norm=QKNorm.NONE,
                          norm_topk_prob=routing.norm_topk_prob, shared_expert_intermediate=shared, kinds=kinds,
                          routing=routing, cache=(1, self.mla.kv_lora_rank, self.mla.rope_dim))

    def attention_module(self, layer: int) -> torch.nn.Module:
        from ..modules import LatentAttention

        p, a = f"model.layers.{layer}", f"model.layers.{layer}.self_attn"
        opt = self._opt
        w = MLAWeights(
            input_norm=self.w.get(f"{p}.input_layernorm.weight"), post_norm=self.w.get(f"{p}.post_attention_layernorm.weight"),
            q=opt(f"{a}.q_proj.weight"), q_a=opt(f"{a}.q_a_proj.weight"), q_a_norm=opt(f"{a}.q_a_layernorm.weight"),
            q_b=opt(f"{a}.q_b_proj.weight"), kv_a=self.w.get(f"{a}.kv_a_proj_with_mqa.weight"),
            kv_a_norm=self.w.get(f"{a}.kv_a_layernorm.weight"), kv_b=self.w.get(f"{a}.kv_b_proj.weight"),
            o=self.w.get(f"{a}.o_proj.weight"))
        return LatentAttention(w, self.spec.dims, self.spec.attention, self.mla)

    def shared_expert(self, layer: int) -> tuple[SwiGLUWeights, Optional[torch.Tensor]]:
        p = f"{self.moe_prefix(layer)}.shared_experts"
        return SwiGLUWeights(self.w.get(f"{p}.gate_proj.weight"), self.w.get(f"{p}.up_proj.weight"),
                             self.w.get(f"{p}.down_proj.weight")), None


@register("deepseek_v3")
class DeepseekV3Adapter(DeepseekV2Adapter):
    family = Family.DEEPSEEK_V3
    scoring = Scoring.SIGMOID
    topk_methods = ("noaux_tc",)

    def renormalise(self) -> bool:
        return bool(self.cfg.get("norm_topk_prob", False))

    def router_bias(self, layer: int) -> Optional[torch.Tensor]:
        return self._opt(f"{self.moe_prefix(layer)}.gate.e_score_correction_bias")
