"""Adapter base: reads one family's config and weights into family-neutral pieces.

An adapter turns checkpoint tensors into float32 torch tensors in the shapes the wrapper
modules take (``nn.Linear`` convention, ``[out, in]``), whatever the checkpoint layout:
one tensor per expert, or fused ``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ...errors import CheckpointError, UnsupportedModelError
from ..checkpoint import WeightStore
from ..config import ModelSpec
from ..weights import AttentionWeights, SwiGLUWeights

ADAPTERS: dict[str, type["Adapter"]] = {}


def register(*model_types: str) -> Callable[[type["Adapter"]], type["Adapter"]]:
    def deco(cls: type["Adapter"]) -> type["Adapter"]:
        for mt in model_types:
            ADAPTERS[mt] = cls
        return cls
    return deco


def adapter_for(cfg: dict[str, Any], weights: WeightStore) -> "Adapter":
    model_type = cfg.get("model_type")
    cls = ADAPTERS.get(str(model_type))
    if cls is None:
        supported = ", ".join(sorted(ADAPTERS))
        archs = ",".join(cfg.get("architectures") or []) or "unknown"
        raise UnsupportedModelError(
            f"model_type '{model_type}' ({archs}) is not a supported MoE architecture; "
            f"supported: {supported}")
    return cls(cfg, weights)


def read_attention(w: WeightStore, layer: int) -> AttentionWeights:
    """A layer's attention weights under the Hub's names (optional biases and q/k norms)."""
    p = f"model.layers.{layer}"
    a = f"{p}.self_attn"
    opt = lambda name: w.get(name) if w.has(name) else None   # noqa: E731
    return AttentionWeights(
        input_norm=w.get(f"{p}.input_layernorm.weight"), post_norm=w.get(f"{p}.post_attention_layernorm.weight"),
        q=w.get(f"{a}.q_proj.weight"), k=w.get(f"{a}.k_proj.weight"),
        v=w.get(f"{a}.v_proj.weight"), o=w.get(f"{a}.o_proj.weight"),
        q_bias=opt(f"{a}.q_proj.bias"), k_bias=opt(f"{a}.k_proj.bias"),
        v_bias=opt(f"{a}.v_proj.bias"), o_bias=opt(f"{a}.o_proj.bias"),
        q_norm=opt(f"{a}.q_norm.weight"), k_norm=opt(f"{a}.k_norm.weight"),
    )


class Adapter:
    """Hub naming (``model.layers.N.self_attn.q_proj`` ...) shared by every family here."""

    moe_prefixes: tuple[str, ...] = ("mlp",)
    expert_names: tuple[tuple[str, str, str], ...] = (("gate_proj", "up_proj", "down_proj"),)

    def __init__(self, cfg: dict[str, Any], weights: WeightStore):
        self.cfg = cfg
        self.w = weights
        self.spec: ModelSpec = self.build_spec()
        self._fused: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- to implement per family --------------------------------------------------------
    def build_spec(self) -> ModelSpec:
        raise NotImplementedError

    # ---- shared readers -----------------------------------------------------------------
    def _opt(self, name: str) -> Optional[torch.Tensor]:
        return self.w.get(name) if self.w.has(name) else None

    def embed(self) -> torch.Tensor:
        return self.w.get("model.embed_tokens.weight")

    def final_norm(self) -> torch.Tensor:
        return self.w.get("model.norm.weight")

    def lm_head(self) -> torch.Tensor:
        if self.w.has("lm_head.weight"):
            return self.w.get("lm_head.weight")
        if self.spec.tie_embeddings:
            return self.embed()
        raise CheckpointError("lm_head.weight is missing and tie_word_embeddings is false; the checkpoint is incomplete")

    def attention(self, layer: int) -> AttentionWeights:
        return read_attention(self.w, layer)

    def attention_module(self, layer: int) -> torch.nn.Module:
        from ..modules import Attention
        return Attention(self.attention(layer), self.spec.dims, self.spec.attention)

    def moe_prefix(self, layer: int) -> str:
        for pre in self.moe_prefixes:
            name = f"model.layers.{layer}.{pre}"
            if self.w.has(f"{name}.gate.weight"):
                return name
        raise CheckpointError(f"router weight of layer {layer} is missing "
                              f"(looked for model.layers.{layer}.{{{','.join(self.moe_prefixes)}}}.gate.weight)")

    def router(self, layer: int) -> torch.Tensor:
        return self.w.get(f"{self.moe_prefix(layer)}.gate.weight")   # [E, H]

    def router_bias(self, layer: int) -> Optional[torch.Tensor]:
        """Score-correction bias added to the scores for expert choice (None: the family has none)."""
        return None

    def expert(self, layer: int, expert: int) -> SwiGLUWeights:
        moe = self.moe_prefix(layer)
        if self.w.has(f"{moe}.experts.gate_up_proj"):
            return self._fused_expert(layer, moe, expert)
        for gate, up, down in self.expert_names:
            pre = f"{moe}.experts.{expert}"
            if self.w.has(f"{pre}.{gate}.weight"):
                return SwiGLUWeights(self.w.get(f"{pre}.{gate}.weight"), self.w.get(f"{pre}.{up}.weight"),
                                     self.w.get(f"{pre}.{down}.weight"))
        raise CheckpointError(f"weights of expert {expert} in layer {layer} are missing from the checkpoint")

    def _fused_expert(self, layer: int, moe: str, expert: int) -> SwiGLUWeights:
        if layer not in self._fused:
            self._fused.clear()   # hold one layer at a time
            gate_up = self.w.get(f"{moe}.experts.gate_up_proj")   # [E, 2I, H]
            down = self.w.get(f"{moe}.experts.down_proj")         # [E, H, I]
            d = self.spec.dims
            if tuple(gate_up.shape) != (d.num_experts, 2 * d.expert_intermediate, d.hidden_size):
                raise UnsupportedModelError(
                    f"fused gate_up_proj of layer {layer} has shape {tuple(gate_up.shape)}, expected "
                    f"[E, 2I, H] = {[d.num_experts, 2 * d.expert_intermediate, d.hidden_size]}")
            self._fused[layer] = (gate_up, down)
        gate_up, down = self._fused[layer]
        inter = self.spec.dims.expert_intermediate
        return SwiGLUWeights(gate_up[expert, :inter], gate_up[expert, inter:], down[expert])

    def dense_mlp(self, layer: int) -> SwiGLUWeights:
        p = f"model.layers.{layer}.mlp"
        return SwiGLUWeights(self.w.get(f"{p}.gate_proj.weight"), self.w.get(f"{p}.up_proj.weight"),
                             self.w.get(f"{p}.down_proj.weight"))

    def shared_expert(self, layer: int) -> tuple[SwiGLUWeights, Optional[torch.Tensor]]:
        """Shared expert weights and its sigmoid gate ``[1, H]`` (None: ungated)."""
        raise UnsupportedModelError(f"{self.spec.family.value} has no shared expert")
