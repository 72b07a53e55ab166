"""The export-side model description: `ModelSpec`, read from config.json in either the
Hub convention (``num_experts``, ``rope_theta``) or the newer one (``num_local_experts``,
``rope_parameters``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Optional

from ..errors import UnsupportedModelError
from ..manifest import Family, LayerKind, ModelDims, Routing, Scoring


class QKNorm(str, Enum):
    NONE = "none"
    PER_HEAD = "per_head"   # Qwen3: RMSNorm over head_dim, after the head split
    FULL = "full"           # OLMoE: RMSNorm over all heads, before the split


@dataclass(frozen=True)
class AttentionSpec:
    qk_norm: QKNorm
    clip_qkv: Optional[float]
    rope_theta: float
    rms_eps: float
    sliding_window: Optional[int]


@dataclass(frozen=True)
class ModelSpec:
    family: Family
    model_type: str
    dims: ModelDims
    routing: Routing
    attention: AttentionSpec
    layer_kinds: tuple[LayerKind, ...]
    dense_intermediate: int
    tie_embeddings: bool
    bos_token_id: Optional[int]
    eos_token_ids: tuple[int, ...]


def first(cfg: dict[str, Any], *keys: str, default: Any = None, required: bool = True) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    if required and default is None:
        raise UnsupportedModelError(f"config.json has none of {', '.join(keys)}; the checkpoint is incomplete")
    return default


def rope_theta(cfg: dict[str, Any]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for block in (params, scaling):
        kind = block.get("rope_type", block.get("type", "default"))
        if kind not in ("default", None):
            raise UnsupportedModelError(
                f"RoPE type '{kind}' is not supported (only 'default'); use a checkpoint without rope scaling")
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise UnsupportedModelError("config.json has neither rope_theta nor rope_parameters.rope_theta")
    return float(theta)


def layer_kinds(cfg: dict[str, Any], num_layers: int, num_experts: int) -> tuple[LayerKind, ...]:
    """Qwen-style sparsity: a layer is MoE unless listed in ``mlp_only_layers`` or skipped
    by ``decoder_sparse_step``."""
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    step = int(cfg.get("decoder_sparse_step") or 1)
    return tuple(
        LayerKind.MOE if (i not in mlp_only and num_experts > 0 and (i + 1) % step == 0) else LayerKind.DENSE
        for i in range(num_layers))


def build_spec(cfg: dict[str, Any], family: Family, *, qk_norm: QKNorm, norm_topk_prob: bool,
               shared_expert_intermediate: int = 0, kinds: Optional[tuple[LayerKind, ...]] = None,
               sliding_window: Optional[int] = None, routing: Optional[Routing] = None,
               cache: Optional[tuple[int, int, int]] = None) -> ModelSpec:
    """``cache``: (heads, key dim, value dim) of the KV cache when it is not the GQA one."""
    hidden = int(first(cfg, "hidden_size"))
    heads = int(first(cfg, "num_attention_heads"))
    num_layers = int(first(cfg, "num_hidden_layers"))
    experts = int(first(cfg, "num_local_experts", "num_experts"))
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act '{cfg['hidden_act']}' is not supported (only silu SwiGLU experts)")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    dims = ModelDims(
        num_layers=num_layers, hidden_size=hidden, vocab_size=int(first(cfg, "vocab_size")),
        num_heads=heads, num_kv_heads=int(first(cfg, "num_key_value_heads", default=heads)),
        head_dim=int(first(cfg, "head_dim", default=hidden // heads)),
        num_experts=experts, top_k=int(first(cfg, "num_experts_per_tok")),
        expert_intermediate=int(first(cfg, "moe_intermediate_size", "intermediate_size")),
        shared_expert_intermediate=shared_expert_intermediate,
        max_positions=int(first(cfg, "max_position_embeddings")),
        cache_heads=0, cache_key_dim=0, cache_value_dim=0,
    )
    heads_kv, key_dim, value_dim = cache or (dims.num_kv_heads, dims.head_dim, dims.head_dim)
    dims = replace(dims, cache_heads=heads_kv, cache_key_dim=key_dim, cache_value_dim=value_dim)
    if dims.top_k > dims.num_experts:
        raise UnsupportedModelError(f"num_experts_per_tok {dims.top_k} exceeds the {experts} experts; fix config.json")
    return ModelSpec(
        family=family, model_type=str(cfg.get("model_type")), dims=dims,
        routing=routing or Routing(Scoring.SOFTMAX, norm_topk_prob),
        attention=AttentionSpec(qk_norm=qk_norm, clip_qkv=cfg.get("clip_qkv"), rope_theta=rope_theta(cfg),
                                rms_eps=float(first(cfg, "rms_norm_eps", default=1e-6)),
                                sliding_window=sliding_window),
        layer_kinds=kinds if kinds is not None else layer_kinds(cfg, num_layers, experts),
        dense_intermediate=int(cfg.get("intermediate_size") or 0),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids,
    )
