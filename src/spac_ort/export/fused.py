"""Fused graphs (``--graphs fused``): one layer's attention and router in one graph on ONNX
Runtime's fused operators, and the builder every fused graph uses (the final graphs are in
`fused_head`, the draft's in `fused_draft`).

    layer:  SkipSimplifiedLayerNormalization(ffn_in + hidden)  -> x, h
            MatMul(x, [q|k|v]) -> q, k, v  (biases, q/k norms, clipping as the family has them)
            GroupQueryAttention(q, k, v, KV cache shared in place, rotary from cos/sin tables)
            MatMul(., o);  SkipSimplifiedLayerNormalization(attn + h) -> normed, hidden_out
            router: MatMul -> router_logits [1, T, E] (com.microsoft.MoE routes from them)
                    -> Softmax -> TopK [-> renormalise] -> topk ids and weights (the sensor's)

The residual of a layer is folded into the next layer's first norm (``ffn_in`` + ``hidden``),
so a layer is two calls: this graph and its experts. Built with onnx.helper over the
adapter's weights; each graph is checked against the torch modules by the piece writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import naming
from ..errors import UnsupportedModelError
from ..manifest import ModelDims, Routing, Scoring, TopkMethod
from ..naming import PieceKind
from .config import AttentionSpec, QKNorm
from .onnx_io import Template
from .weights import AttentionWeights

MS = "com.microsoft"
F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def check_supported(dims: ModelDims, routing: Routing, mla: bool) -> None:
    """Raise `UnsupportedModelError` when the model has no fused graphs."""
    if mla:
        raise UnsupportedModelError("latent attention (DeepSeek) has no fused graphs; export with --graphs portable")
    if dims.head_dim % 16:
        raise UnsupportedModelError(f"fused attention needs a head size that is a multiple of 16 (this model's is "
                                    f"{dims.head_dim}); export with --graphs portable")
    if (routing.scoring is not Scoring.SOFTMAX or routing.topk_method is not TopkMethod.GREEDY
            or routing.routed_scaling_factor != 1.0):
        raise UnsupportedModelError("this family's routing (sigmoid, group-limited or scaled) has no fused router; "
                                    "export with --graphs portable")


SHARED = frozenset({"", naming.SEQLENS_K, naming.TOTAL_LENGTH, naming.COS_CACHE, naming.SIN_CACHE})


@dataclass
class GraphBuilder:
    """Nodes, constants and weights of one graph under construction.

    Builders use local names; in a ``scope`` (one layer of a whole-model graph) a name
    becomes ``aliases[name]`` if aliased, stays as is if shared (`SHARED`), else gets the
    scope as prefix. Methods return the local name.
    """

    nodes: list = field(default_factory=list)
    consts: list = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    scope: str = ""
    aliases: dict[str, str] = field(default_factory=dict)

    def name(self, local: str) -> str:
        if local in self.aliases:
            return self.aliases[local]
        return local if not self.scope or local in SHARED else self.scope + local

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, [self.name(i) for i in inputs], [self.name(o) for o in outputs],
                                           domain=domain or None, **attrs))
        return outputs[0]

    def const(self, name: str, values: list, dtype: int = I64, scalar: bool = False) -> str:
        self.consts.append(helper.make_tensor(self.name(name), dtype, [] if scalar else [len(values)], values))
        return name

    def weight(self, name: str, arr, dtype=np.float32) -> str:
        self.weights[self.name(name)] = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
        return name

    def template(self, name: str, inputs: list, outputs: list) -> tuple[Template, dict]:
        inits = list(self.consts)
        for n, arr in self.weights.items():
            t = TensorProto(name=n, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype))
            t.dims.extend(arr.shape)
            inits.append(t)
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=inits)
        model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                      helper.make_opsetid(MS, 1)])
        return Template(model, tuple(self.weights)), dict(self.weights)


def as_in_out(w) -> np.ndarray:
    """A torch [out, in] weight as a numpy [in, out] matrix."""
    return w.detach().float().numpy().T


def value_info(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def attention_nodes(g: GraphBuilder, d: ModelDims, spec: AttentionSpec, w: AttentionWeights,
                    residual: bool = True) -> None:
    """hidden (+ ffn_in with ``residual``) -> normed, hidden_out, present key/value."""
    eps = spec.rms_eps
    nh, kv, hd = d.num_heads, d.num_kv_heads, d.head_dim
    if residual:
        g.node("SkipSimplifiedLayerNormalization", [naming.FFN_IN, naming.HIDDEN,
                                                    g.weight("w_input_norm", w.input_norm)], ["x", "", "", "h"], MS,
               epsilon=eps)
    else:
        g.node("SimplifiedLayerNormalization", [naming.HIDDEN, g.weight("w_input_norm", w.input_norm)], ["x"],
               axis=-1, epsilon=eps)
        g.node("Identity", [naming.HIDDEN], ["h"])
    g.node("MatMul", ["x", g.weight("w_qkv", np.concatenate([as_in_out(w.q), as_in_out(w.k), as_in_out(w.v)], axis=1))], ["qkv"])
    if w.q_bias is not None:
        bias = np.concatenate([b.detach().float().numpy() for b in (w.q_bias, w.k_bias, w.v_bias)])
        g.node("Add", ["qkv", g.weight("b_qkv", bias)], ["qkv_b"])
    g.node("Split", ["qkv_b" if w.q_bias is not None else "qkv", g.const("qkv_split", [nh * hd, kv * hd, kv * hd])],
           ["q0", "k0", "v0"], axis=-1)
    q, k, v = "q0", "k0", "v0"
    if spec.qk_norm is QKNorm.FULL:
        q = g.node("SimplifiedLayerNormalization", [q, g.weight("w_q_norm", w.q_norm)], ["q_n"], axis=-1, epsilon=eps)
        k = g.node("SimplifiedLayerNormalization", [k, g.weight("w_k_norm", w.k_norm)], ["k_n"], axis=-1, epsilon=eps)
    if spec.clip_qkv is not None:
        lo = g.const("clip_lo", [-spec.clip_qkv], F, scalar=True)
        hi = g.const("clip_hi", [spec.clip_qkv], F, scalar=True)
        q, k, v = (g.node("Clip", [z, lo, hi], [f"{z}_c"]) for z in (q, k, v))
    if spec.qk_norm is QKNorm.PER_HEAD:
        q, k = (_head_norm(g, z, heads, w_norm, eps) for z, heads, w_norm in
                ((q, nh, ("w_q_norm", w.q_norm)), (k, kv, ("w_k_norm", w.k_norm))))
    g.node("GroupQueryAttention", [q, k, v, naming.PAST_KEY, naming.PAST_VALUE, naming.SEQLENS_K, naming.TOTAL_LENGTH,
                                   naming.COS_CACHE, naming.SIN_CACHE],
           ["attn", naming.PRESENT_KEY, naming.PRESENT_VALUE], MS, num_heads=nh, kv_num_heads=kv, do_rotary=1,
           local_window_size=spec.sliding_window or -1)   # keys attended, self included
    g.node("MatMul", ["attn", g.weight("w_o", as_in_out(w.o))], ["o"])
    if w.o_bias is not None:
        g.node("Add", ["o", g.weight("b_o", w.o_bias.detach().float().numpy())], ["o_b"])
    g.node("SkipSimplifiedLayerNormalization", ["o_b" if w.o_bias is not None else "o", "h",
                                                g.weight("w_post_norm", w.post_norm)],
           [naming.NORMED, "", "", naming.HIDDEN_OUT], MS, epsilon=eps)


def _head_norm(g: GraphBuilder, z: str, heads: int, weight: tuple, eps: float) -> str:
    """RMSNorm over each head's dims (Qwen3's q/k norms)."""
    d = weight[1].shape[-1]
    g.node("Reshape", [z, g.const(f"{z}_heads", [1, -1, heads, d])], [f"{z}_h"])
    g.node("SimplifiedLayerNormalization", [f"{z}_h", g.weight(*weight)], [f"{z}_hn"], axis=-1, epsilon=eps)
    return g.node("Reshape", [f"{z}_hn", g.const(f"{z}_flat", [1, -1, heads * d])], [f"{z}_n"])


def _router(g: GraphBuilder, d: ModelDims, routing: Routing, weight) -> None:
    g.node("MatMul", [naming.NORMED, g.weight("w_router", as_in_out(weight))], [naming.ROUTER_LOGITS])
    g.node("Softmax", [naming.ROUTER_LOGITS], ["probs"], axis=-1)
    top = "w_top" if routing.norm_topk_prob else naming.TOPK_WEIGHTS
    g.node("TopK", ["probs", g.const("k", [d.top_k])], [top, naming.TOPK_IDS], axis=-1)
    if routing.norm_topk_prob:
        g.node("ReduceSum", [top, g.const("last_axis", [-1])], ["w_sum"], keepdims=1)
        g.node("Div", [top, "w_sum"], [naming.TOPK_WEIGHTS])


def layer_graph(d: ModelDims, spec: AttentionSpec, routing: Routing, w: AttentionWeights,
                router: Optional[object]) -> tuple[Template, dict]:
    """A MoE layer (``router`` = the router weight [E, H]) or a dense layer (None)."""
    g = GraphBuilder()
    attention_nodes(g, d, spec, w)
    if router is not None:
        _router(g, d, routing, router)
    h, kv, hd = d.hidden_size, d.num_kv_heads, d.head_dim
    inputs = [value_info(naming.HIDDEN, F, [1, "T", h]), value_info(naming.FFN_IN, F, [1, "T", h]),
              value_info(naming.PAST_KEY, F, [1, kv, "M", hd]), value_info(naming.PAST_VALUE, F, [1, kv, "M", hd]),
              value_info(naming.SEQLENS_K, I32, [1]), value_info(naming.TOTAL_LENGTH, I32, []),
              value_info(naming.COS_CACHE, F, ["C", hd // 2]), value_info(naming.SIN_CACHE, F, ["C", hd // 2])]
    outputs = [value_info(naming.HIDDEN_OUT, F, [1, "T", h]), value_info(naming.NORMED, F, [1, "T", h])]
    if router is not None:
        a = d.top_k
        outputs += [value_info(naming.TOPK_WEIGHTS, F, [1, "T", a]), value_info(naming.TOPK_IDS, I64, [1, "T", a]),
                    value_info(naming.ROUTER_LOGITS, F, [1, "T", d.num_experts])]
    outputs += [value_info(naming.PRESENT_KEY, F, [1, kv, "M", hd]), value_info(naming.PRESENT_VALUE, F, [1, kv, "M", hd])]
    return g.template((PieceKind.LAYER if router is not None else PieceKind.DENSE_LAYER).value, inputs, outputs)
