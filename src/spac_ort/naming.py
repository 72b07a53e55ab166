"""The one place that names bundle files and ONNX graph inputs/outputs.

Bundle layout::

    spac-manifest.json
    embed.onnx (+ .data)            token ids -> hidden
    layers/NNN/attention.onnx       norm, attention with KV cache, residual, post-norm
    layers/NNN/router.onnx          (MoE layers) logits -> top-k weights and ids
    layers/NNN/experts/EEE.onnx     (MoE layers) one SwiGLU FFN per expert
    layers/NNN/shared_expert.onnx   (families with a shared expert)
    layers/NNN/dense_mlp.onnx       (dense layers of a mixed model)
    head.onnx                       final norm + lm_head
    tokenizer/tokenizer.json
    tokenizer/chat_template.jinja   (checkpoints with a chat template)

Bundles exported with fused graphs (``--graphs fused``) replace attention, router and head:

    layers/NNN/layer.onnx           residual + norm, fused attention with the KV cache updated
                                    in place, post-norm, router (MoE layers)
    layers/NNN/dense_layer.onnx     the same without the router (dense layers)
    final.onnx                      residual + final norm + lm_head over chosen rows
    final_greedy.onnx               (fp32 heads) the same as an 8-bit screen with exact candidates
"""

from __future__ import annotations

from enum import Enum

MANIFEST = "spac-manifest.json"
DATA_SUFFIX = ".data"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer/tokenizer.json"
CHAT_TEMPLATE_FILE = "tokenizer/chat_template.jinja"

EMBED = "embed.onnx"
HEAD = "head.onnx"
FINAL = "final.onnx"
FINAL_GREEDY = "final_greedy.onnx"
EXPERT_TEMPLATE = "layers/{layer:03d}/experts/{expert:03d}.onnx"


class PieceKind(str, Enum):
    EMBED = "embed"
    ATTENTION = "attention"
    ROUTER = "router"
    EXPERT = "expert"
    SHARED_EXPERT = "shared_expert"
    DENSE_MLP = "dense_mlp"
    HEAD = "head"
    LAYER = "layer"                 # fused graphs: attention + router of one MoE layer
    DENSE_LAYER = "dense_layer"     # fused graphs: attention of one dense layer
    FINAL = "final"                 # fused graphs: residual, final norm, lm_head
    FINAL_GREEDY = "final_greedy"   # fused graphs, fp32 head: an 8-bit screen + exact candidates


class Graphs(str, Enum):
    """How a bundle's non-expert graphs are built (``spac-export --graphs``)."""

    FUSED = "fused"         # ORT's fused attention and norm ops (com.microsoft), KV cache in place
    PORTABLE = "portable"   # standard ONNX ops only, for providers without the contrib ops


def layer_piece(kind: PieceKind, layer: int) -> str:
    """Path of a per-layer piece (attention, router, shared expert, dense MLP)."""
    return f"layers/{layer:03d}/{kind.value}.onnx"


def expert_path(layer: int, expert: int, template: str = EXPERT_TEMPLATE) -> str:
    return template.format(layer=layer, expert=expert)


def data_path(graph_path: str) -> str:
    """External-data file that sits next to a graph."""
    return graph_path + DATA_SUFFIX


# ONNX input / output names, per piece kind.
INPUT_IDS = "input_ids"            # [1, T] int64
POSITION_IDS = "position_ids"      # [1, T] int64
HIDDEN = "hidden"                  # [1, T, H] residual stream
NORMED = "normed"                  # [1, T, H] post-attention-norm activations
PAST_KEY = "past_key"              # [1, KV, P, D]
PAST_VALUE = "past_value"
PRESENT_KEY = "present_key"        # [1, KV, P+T, D]
PRESENT_VALUE = "present_value"
KV_NAMES = (PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE)
HIDDEN_OUT = "hidden_out"
TOPK_WEIGHTS = "topk_weights"      # [1, T, A] float
TOPK_IDS = "topk_ids"              # [1, T, A] int64
FFN_OUT = "ffn_out"                # [1, T, H]
LOGITS = "logits"                  # [1, T, V]
FFN_IN = "ffn_in"                  # [1, T, H] the previous layer's FFN output (fused graphs)
SEQLENS_K = "seqlens_k"            # [1] int32: cache length after this call, minus one
TOTAL_LENGTH = "total_sequence_length"   # [] int32: cache length after this call
COS_CACHE = "cos_cache"            # [C, D/2] rotary tables, C >= positions used
SIN_CACHE = "sin_cache"
ROUTER_LOGITS = "router_logits"    # [1, T, E] the router's logits (com.microsoft.MoE routes from them)
ENTRIES = "entries"                # [A] int64: the stack entries one lane call gathers (integer slots on CUDA)
LOGIT_ROWS = "logit_rows"          # [N] int64: the rows of the window that get logits
CAND_UPPER = "cand_upper"          # [1, N, K] the K best upper bounds of the screened logits
CAND_IDS = "cand_ids"              # [1, N, K] int64: their token ids
CAND_LOGITS = "cand_logits"        # [1, N, K] their exact fp32 logits

IO_NAMES: dict[PieceKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    PieceKind.EMBED: ((INPUT_IDS,), (HIDDEN,)),
    PieceKind.ATTENTION: (
        (HIDDEN, POSITION_IDS, PAST_KEY, PAST_VALUE),
        (HIDDEN_OUT, NORMED, PRESENT_KEY, PRESENT_VALUE),
    ),
    PieceKind.ROUTER: ((NORMED,), (TOPK_WEIGHTS, TOPK_IDS)),
    PieceKind.EXPERT: ((NORMED,), (FFN_OUT,)),
    PieceKind.SHARED_EXPERT: ((NORMED,), (FFN_OUT,)),
    PieceKind.DENSE_MLP: ((NORMED,), (FFN_OUT,)),
    PieceKind.HEAD: ((HIDDEN,), (LOGITS,)),
    PieceKind.LAYER: (
        (HIDDEN, FFN_IN, PAST_KEY, PAST_VALUE, SEQLENS_K, TOTAL_LENGTH, COS_CACHE, SIN_CACHE),
        (HIDDEN_OUT, NORMED, TOPK_WEIGHTS, TOPK_IDS, ROUTER_LOGITS, PRESENT_KEY, PRESENT_VALUE),
    ),
    PieceKind.DENSE_LAYER: (
        (HIDDEN, FFN_IN, PAST_KEY, PAST_VALUE, SEQLENS_K, TOTAL_LENGTH, COS_CACHE, SIN_CACHE),
        (HIDDEN_OUT, NORMED, PRESENT_KEY, PRESENT_VALUE),
    ),
    PieceKind.FINAL: ((HIDDEN, FFN_IN, LOGIT_ROWS), (LOGITS,)),
    PieceKind.FINAL_GREEDY: ((HIDDEN, FFN_IN, LOGIT_ROWS), (LOGITS, CAND_UPPER, CAND_IDS, CAND_LOGITS)),
}

# Which piece kinds each graph variant's bundles hold (experts in both).
VARIANT_KINDS: dict[Graphs, tuple[PieceKind, ...]] = {
    Graphs.PORTABLE: (PieceKind.EMBED, PieceKind.ATTENTION, PieceKind.ROUTER, PieceKind.EXPERT,
                      PieceKind.SHARED_EXPERT, PieceKind.DENSE_MLP, PieceKind.HEAD),
    Graphs.FUSED: (PieceKind.EMBED, PieceKind.LAYER, PieceKind.DENSE_LAYER, PieceKind.EXPERT,
                   PieceKind.SHARED_EXPERT, PieceKind.DENSE_MLP, PieceKind.FINAL, PieceKind.FINAL_GREEDY),
}


# The draft model: optimum's "text-generation-with-past" convention.
DRAFT_DIR = "draft"
DRAFT_GRAPH = "draft/model.onnx"
DRAFT_ATTENTION_MASK = "attention_mask"      # [1, P+T] int64


def is_kv(name: str) -> bool:
    """A fused graph's KV cache input or output (``past_key``, or ``past_key.N`` in a fused draft)."""
    return name.split(".")[0] in KV_NAMES


def fused_draft_cache(layer: int, name: str) -> str:
    """KV input/output of a fused draft graph: ``past_key.N`` ... ``present_value.N``
    (``name`` one of PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE)."""
    return f"{name}.{layer}"


def draft_past(layer: int, which: str) -> str:
    """Draft KV input name; ``which`` is "key" or "value"."""
    return f"past_key_values.{layer}.{which}"


def draft_present(layer: int, which: str) -> str:
    return f"present.{layer}.{which}"
