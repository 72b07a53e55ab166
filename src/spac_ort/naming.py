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
"""

from __future__ import annotations

from enum import Enum

MANIFEST = "spac-manifest.json"
DATA_SUFFIX = ".data"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer/tokenizer.json"

EMBED = "embed.onnx"
HEAD = "head.onnx"
EXPERT_TEMPLATE = "layers/{layer:03d}/experts/{expert:03d}.onnx"


class PieceKind(str, Enum):
    EMBED = "embed"
    ATTENTION = "attention"
    ROUTER = "router"
    EXPERT = "expert"
    SHARED_EXPERT = "shared_expert"
    DENSE_MLP = "dense_mlp"
    HEAD = "head"


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
HIDDEN_OUT = "hidden_out"
TOPK_WEIGHTS = "topk_weights"      # [1, T, A] float
TOPK_IDS = "topk_ids"              # [1, T, A] int64
FFN_OUT = "ffn_out"                # [1, T, H]
LOGITS = "logits"                  # [1, T, V]

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
}


# The draft model: optimum's "text-generation-with-past" convention.
DRAFT_DIR = "draft"
DRAFT_GRAPH = "draft/model.onnx"
DRAFT_ATTENTION_MASK = "attention_mask"      # [1, P+T] int64


def draft_past(layer: int, which: str) -> str:
    """Draft KV input name; ``which`` is "key" or "value"."""
    return f"past_key_values.{layer}.{which}"


def draft_present(layer: int, which: str) -> str:
    return f"present.{layer}.{which}"
