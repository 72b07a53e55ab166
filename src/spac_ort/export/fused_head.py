"""The last graph of a fused bundle: the last layer's residual, the final norm and the
lm_head, at the rows asked for (``logit_rows``).

    final.onnx         fp32 lm_head (or 8-bit with --head-quant int8): every logit exact
    final_greedy.onnx  for greedy decoding with an fp32 head: an 8-bit screen gives every
                       logit with a bound on its error; the K best upper bounds get their
                       exact fp32 logit from the head's rows. When the K-th best upper bound
                       is below the best exact logit, no other token can be the argmax, so
                       the argmax is fp32's; otherwise the runtime runs final.onnx.

The screen reads a quarter of the head's bytes and K rows of it. The bound per logit n:
sum over blocks b of (s_w[n, b] / 2) * |x_b|_1 (weights rounded to nearest, scale s_w)
+ max|x| / 127 * sum_k |w_q[k, n]| (activations quantized by the kernel, scale at most
max|x| / 127, error at most one step) + a margin for fp32 rounding.
"""

from __future__ import annotations

import numpy as np

from .. import naming
from ..errors import UnsupportedModelError
from ..manifest import ModelDims
from .fused import F, I64, MS, GraphBuilder, as_in_out, value_info
from .onnx_io import Template

HEAD_QUANT = ("none", "int8")
INT8_BLOCK = 32


def int8_blocks(w: np.ndarray, block: int = INT8_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] weight as MatMulNBits takes 8-bit weights: per column, blocks of ``block``
    rows, symmetric (the default zero point 128): (uint8 [N, K/block, block], scales [N * K/block])."""
    k, n = w.shape
    blocks = np.ascontiguousarray(w.T).reshape(n, k // block, block)
    scale = np.abs(blocks).max(axis=-1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128
    return q.astype(np.uint8), scale.astype(np.float32).reshape(-1)


def _normed_rows(g: GraphBuilder, eps: float, norm) -> None:
    g.node("Gather", [naming.HIDDEN, naming.LOGIT_ROWS], ["h_rows"], axis=1)
    g.node("Gather", [naming.FFN_IN, naming.LOGIT_ROWS], ["f_rows"], axis=1)
    g.node("SkipSimplifiedLayerNormalization", ["f_rows", "h_rows", g.weight("w_norm", norm)], ["x"], MS,
           epsilon=eps)


def int8_head(g: GraphBuilder, d: ModelDims, q: np.ndarray, scales: np.ndarray, out: str) -> None:
    """lm_head as 8-bit MatMulNBits over ``x`` (blocks of `INT8_BLOCK`, accuracy level 4)."""
    g.node("MatMulNBits", ["x", g.weight("w_lm_head_q", q, np.uint8), g.weight("w_lm_head_scales", scales)],
           [out], MS, K=d.hidden_size, N=d.vocab_size, bits=8, block_size=INT8_BLOCK, accuracy_level=4)


def _inputs(d: ModelDims) -> list:
    h = d.hidden_size
    return [value_info(naming.HIDDEN, F, [1, "T", h]), value_info(naming.FFN_IN, F, [1, "T", h]),
            value_info(naming.LOGIT_ROWS, I64, ["N"])]


def final_graph(d: ModelDims, eps: float, norm, lm_head, head_quant: str = "none") -> tuple[Template, dict]:
    """Residual of the last layer, final norm and lm_head over the rows asked for;
    ``head_quant="int8"``: lm_head as 8-bit MatMulNBits (activations quantized too,
    accuracy level 4: the fast CPU kernel)."""
    g = GraphBuilder()
    _normed_rows(g, eps, norm)
    w = as_in_out(lm_head)
    if head_quant == "int8" and d.hidden_size % INT8_BLOCK == 0:
        int8_head(g, d, *int8_blocks(w), naming.LOGITS)
    elif head_quant == "int8":
        raise UnsupportedModelError(f"an 8-bit head needs a hidden size that is a multiple of {INT8_BLOCK} "
                                    f"(this model's is {d.hidden_size}); export without --head-quant")
    else:
        g.node("MatMul", ["x", g.weight("w_lm_head", w)], [naming.LOGITS])
    return g.template("final", _inputs(d), [value_info(naming.LOGITS, F, [1, "N", d.vocab_size])])


SCREEN_K = 32          # candidates that get their exact logit
ROUNDING = 1e-4        # margin of the bound for fp32 rounding, relative to |x|_1 * max|w| (plus absolute)


def greedy_graph(d: ModelDims, eps: float, norm, lm_head) -> tuple[Template, dict]:
    """The screened head for greedy decoding (see the module docstring). Outputs: logits
    (8-bit) [1, N, V], cand_upper and cand_ids (the K best upper bounds, descending) and
    cand_logits (their exact fp32 logits) [1, N, K]."""
    g = GraphBuilder()
    _normed_rows(g, eps, norm)
    w = as_in_out(lm_head)                                                   # [H, V]
    q, scales = int8_blocks(w)
    int8_head(g, d, q, scales, naming.LOGITS)
    blocks = d.hidden_size // INT8_BLOCK
    dequant = (q.astype(np.float32) - 128) * scales.reshape(d.vocab_size, blocks, 1)   # [V, blocks, 32]
    k = min(SCREEN_K, d.vocab_size)
    g.node("Abs", ["x"], ["x_abs"])
    g.node("Reshape", ["x_abs", g.const("blocks", [1, -1, blocks, INT8_BLOCK])], ["x_blocks"])
    g.node("ReduceSum", ["x_blocks", g.const("last", [-1])], ["x_block_l1"], keepdims=0)        # [1, N, blocks]
    g.node("MatMul", ["x_block_l1", g.weight("half_steps", scales.reshape(d.vocab_size, blocks).T / 2)], ["b_w"])
    g.node("ReduceMax", ["x_abs"], ["x_max"], axes=[-1], keepdims=1)                        # [1, N, 1]
    g.node("Mul", ["x_max", g.weight("w_abs_sum", np.abs(dequant).sum(axis=(1, 2)) / 127)], ["b_x"])
    g.node("ReduceSum", ["x_abs", "last"], ["x_l1"], keepdims=1)
    g.node("Mul", ["x_l1", g.const("rounding", [ROUNDING * float(np.abs(w).max())], F, scalar=True)], ["b_r"])
    g.node("Add", ["b_w", "b_x"], ["b_wx"])
    g.node("Add", ["b_wx", "b_r"], ["b_wxr"])
    g.node("Add", ["b_wxr", g.const("rounding_abs", [ROUNDING], F, scalar=True)], ["bound"])
    g.node("Add", [naming.LOGITS, "bound"], ["upper"])
    g.node("TopK", ["upper", g.const("k", [k])], [naming.CAND_UPPER, naming.CAND_IDS], axis=-1)
    g.node("Gather", [g.weight("w_rows", w.T), naming.CAND_IDS], ["rows"], axis=0)        # [1, N, K, H]
    g.node("Unsqueeze", ["x", "last"], ["x_col"])                                         # [1, N, H, 1]
    g.node("MatMul", ["rows", "x_col"], ["exact"])                                        # [1, N, K, 1]
    g.node("Squeeze", ["exact", "last"], [naming.CAND_LOGITS])
    v, n = d.vocab_size, "N"
    return g.template("final_greedy", _inputs(d),
                      [value_info(naming.LOGITS, F, [1, n, v]), value_info(naming.CAND_UPPER, F, [1, n, k]),
                       value_info(naming.CAND_IDS, I64, [1, n, k]), value_info(naming.CAND_LOGITS, F, [1, n, k])])

