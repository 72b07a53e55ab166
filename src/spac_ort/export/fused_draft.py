"""The dense draft model as one fused graph: the whole decoder in one call per step.

    input_ids -> Gather(embed) -> per layer: fused attention (KV cache updated in place,
    ``past_key.N`` / ``present_key.N`` share a buffer), SwiGLU MLP -> final norm at the
    last position -> lm_head (8-bit MatMulNBits by default) -> logits [1, 1, V]

Built with the same builder as the target's fused graphs, over the Hub's names of a dense
decoder (Qwen3, Qwen2, Llama, Mistral). The draft only proposes tokens, so an 8-bit head
never changes the output; it cuts the bytes a draft token reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import naming
from ..errors import UnsupportedModelError
from ..manifest import ModelDims, Routing, Scoring
from .adapters.base import read_attention
from .checkpoint import WeightStore
from .config import AttentionSpec, QKNorm, first, rope_theta
from .fused import F, I32, I64, MS, GraphBuilder, as_in_out, attention_nodes, check_supported, value_info
from .fused_head import INT8_BLOCK, int8_blocks, int8_head
from .onnx_io import Template

DRAFT_TYPES = ("qwen3", "qwen2", "llama", "mistral")


@dataclass(frozen=True)
class DraftGraphSpec:
    dims: ModelDims
    attention: AttentionSpec


def draft_spec(cfg: dict[str, Any], weights: WeightStore) -> Optional[DraftGraphSpec]:
    """The draft's shape when it can be one fused graph, else None (optimum exports it)."""
    if cfg.get("model_type") not in DRAFT_TYPES or cfg.get("hidden_act", "silu") != "silu":
        return None
    heads = int(first(cfg, "num_attention_heads"))
    hidden = int(first(cfg, "hidden_size"))
    d = ModelDims(num_layers=int(first(cfg, "num_hidden_layers")), hidden_size=hidden,
                  vocab_size=int(first(cfg, "vocab_size")), num_heads=heads,
                  num_kv_heads=int(first(cfg, "num_key_value_heads", default=heads)),
                  head_dim=int(first(cfg, "head_dim", default=hidden // heads)), num_experts=1, top_k=1,
                  expert_intermediate=int(first(cfg, "intermediate_size")), shared_expert_intermediate=0,
                  max_positions=int(first(cfg, "max_position_embeddings")), cache_heads=0, cache_key_dim=0,
                  cache_value_dim=0)
    try:
        check_supported(d, Routing(Scoring.SOFTMAX, True), mla=False)
        theta = rope_theta(cfg)
    except UnsupportedModelError:
        return None
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    qk = QKNorm.PER_HEAD if weights.has("model.layers.0.self_attn.q_norm.weight") else QKNorm.NONE
    return DraftGraphSpec(d, AttentionSpec(qk, None, theta, float(first(cfg, "rms_norm_eps", default=1e-6)), window))


def _mlp(g: GraphBuilder, w: WeightStore, layer: int, inter: int) -> None:
    p = f"model.layers.{layer}.mlp"
    gate_up = np.concatenate([as_in_out(w.get(f"{p}.gate_proj.weight")), as_in_out(w.get(f"{p}.up_proj.weight"))],
                             axis=1)
    g.node("MatMul", [naming.NORMED, g.weight("w_gate_up", gate_up)], ["gu"])
    g.node("Split", ["gu", g.const("gu_split", [inter, inter])], ["gate", "up"], axis=-1)
    g.node("Sigmoid", ["gate"], ["sig"])
    g.node("Mul", ["gate", "sig"], ["act"])
    g.node("Mul", ["act", "up"], ["mid"])
    g.node("MatMul", ["mid", g.weight("w_down", as_in_out(w.get(f"{p}.down_proj.weight")))], [naming.FFN_OUT])


def draft_graph(spec: DraftGraphSpec, w: WeightStore, head_quant: str) -> tuple[Template, dict]:
    d = spec.dims
    g = GraphBuilder()
    g.node("Gather", [g.weight("w_embed", w.get("model.embed_tokens.weight")), naming.INPUT_IDS], ["h_0"], axis=0)
    for layer in range(d.num_layers):
        g.scope = f"l{layer}/"
        g.aliases = {naming.HIDDEN: f"h_{layer}", naming.FFN_IN: f"f_{layer}", naming.HIDDEN_OUT: f"h_{layer + 1}",
                     naming.FFN_OUT: f"f_{layer + 1}",
                     **{n: naming.fused_draft_cache(layer, n) for n in (naming.PAST_KEY, naming.PAST_VALUE,
                                                                         naming.PRESENT_KEY, naming.PRESENT_VALUE)}}
        attention_nodes(g, d, spec.attention, read_attention(w, layer), residual=layer > 0)
        _mlp(g, w, layer, d.expert_intermediate)
    g.scope, g.aliases = "", {}
    last = d.num_layers
    g.node("Gather", [f"h_{last}", g.const("last", [-1])], ["h_last"], axis=1)
    g.node("Gather", [f"f_{last}", "last"], ["f_last"], axis=1)
    g.node("SkipSimplifiedLayerNormalization", ["f_last", "h_last", g.weight("w_norm", w.get("model.norm.weight"))],
           ["x"], MS, epsilon=spec.attention.rms_eps)
    head = w.get("lm_head.weight") if w.has("lm_head.weight") else w.get("model.embed_tokens.weight")
    if head_quant == "int8" and d.hidden_size % INT8_BLOCK == 0:
        int8_head(g, d, *int8_blocks(as_in_out(head)), naming.LOGITS)
    else:
        g.node("MatMul", ["x", g.weight("w_lm_head", as_in_out(head))], [naming.LOGITS])
    kv, hd = d.num_kv_heads, d.head_dim
    cache = [value_info(naming.fused_draft_cache(i, which), F, [1, kv, "M", hd]) for i in range(d.num_layers)
             for which in (naming.PAST_KEY, naming.PAST_VALUE)]
    inputs = [value_info(naming.INPUT_IDS, I64, [1, "T"]), *cache, value_info(naming.SEQLENS_K, I32, [1]),
              value_info(naming.TOTAL_LENGTH, I32, []), value_info(naming.COS_CACHE, F, ["C", hd // 2]),
              value_info(naming.SIN_CACHE, F, ["C", hd // 2])]
    outputs = [value_info(naming.LOGITS, F, [1, 1, d.vocab_size]),
               *[value_info(naming.fused_draft_cache(i, which), F, [1, kv, "M", hd]) for i in range(d.num_layers)
                 for which in (naming.PRESENT_KEY, naming.PRESENT_VALUE)]]
    return g.template("draft", inputs, outputs)


def write_draft_graph(spec: DraftGraphSpec, w: WeightStore, out: Path, head_quant: str):
    """Write ``out`` (+ .data); returns the written file entries."""
    from .onnx_io import write

    template, weights = draft_graph(spec, w, head_quant)
    return write(template, weights, out, out.name)
