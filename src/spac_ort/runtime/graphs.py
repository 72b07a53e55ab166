"""ONNX graphs the runtime builds itself: an expert's SwiGLU with its weights as graph
inputs (one graph serves every expert and every slot), and a layer's routed experts in one
call over stacked weights. IR version 8 (the one opset 17 came with): the installed onnx
package would write its newest IR version, which older onnxruntime builds (phones, Jetson,
CUDA) refuse.
"""

from __future__ import annotations

from onnx import TensorProto, helper

from .. import naming


def swiglu_graph(hidden: int, inter: int) -> bytes:
    """down(silu(x @ w_gate) * (x @ w_up)) with the weights as inputs."""
    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("MatMul", [naming.NORMED, "w_gate"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Mul", ["g", "s"], ["a"]),
        helper.make_node("MatMul", [naming.NORMED, "w_up"], ["u"]),
        helper.make_node("Mul", ["a", "u"], ["h"]),
        helper.make_node("MatMul", ["h", "w_down"], [naming.FFN_OUT]),
    ]
    graph = helper.make_graph(
        nodes, "swiglu_slot",
        [vi(naming.NORMED, f, [1, "T", hidden]), vi("w_gate", f, [hidden, inter]), vi("w_up", f, [hidden, inter]),
         vi("w_down", f, [inter, hidden])],
        [vi(naming.FFN_OUT, f, [1, "T", hidden])])
    # IR version 8 (the one opset 17 came with): the installed onnx package would write its
    # newest IR version, which older onnxruntime builds (phones, Jetson, CUDA) refuse
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def grouped_swiglu_graph(hidden: int, inter: int, top_k: int) -> bytes:
    """All routed experts of one layer in one call.

    Inputs: normed [1, T, H]; expert_ids [T, A] (ascending per row); pair_weights [T, A];
    the layer's stacked weights w_gate/w_up [E, H, I], w_down [E, I, H]. Each (token,
    expert) pair gathers its expert's weights and runs the SwiGLU as a batched MatMul; a
    token's A weighted outputs are added one after another in the row's order (ascending
    expert id, the reference accumulation order).
    """
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    const = helper.make_tensor
    nodes = [
        helper.make_node("Constant", [], ["shape_th"], value=const("shape_th", i64, [3], [-1, 1, hidden])),
        helper.make_node("Constant", [], ["shape_p"], value=const("shape_p", i64, [1], [-1])),
        helper.make_node("Constant", [], ["shape_pair"], value=const("shape_pair", i64, [3], [-1, 1, 1])),
        helper.make_node("Constant", [], ["shape_tah"], value=const("shape_tah", i64, [3], [-1, top_k, hidden])),
        helper.make_node("Constant", [], ["expand_a"], value=const("expand_a", i64, [3], [1, top_k, 1])),
        helper.make_node("Constant", [], ["shape_out"], value=const("shape_out", i64, [3], [1, -1, hidden])),
        helper.make_node("Reshape", [naming.NORMED, "shape_th"], ["x_t"]),          # [T, 1, H]
        helper.make_node("Expand", ["x_t", "expand_a"], ["x_ta"]),                  # [T, A, H]
        helper.make_node("Reshape", ["x_ta", "shape_th"], ["x_p"]),                 # [P, 1, H]
        helper.make_node("Reshape", ["expert_ids", "shape_p"], ["ids_p"]),          # [P]
        helper.make_node("Gather", ["w_gate", "ids_p"], ["wg"], axis=0),            # [P, H, I]
        helper.make_node("Gather", ["w_up", "ids_p"], ["wu"], axis=0),
        helper.make_node("Gather", ["w_down", "ids_p"], ["wd"], axis=0),            # [P, I, H]
        helper.make_node("MatMul", ["x_p", "wg"], ["g"]),                           # [P, 1, I]
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Mul", ["g", "s"], ["a"]),
        helper.make_node("MatMul", ["x_p", "wu"], ["u"]),
        helper.make_node("Mul", ["a", "u"], ["h"]),
        helper.make_node("MatMul", ["h", "wd"], ["y"]),                             # [P, 1, H]
        helper.make_node("Reshape", ["pair_weights", "shape_pair"], ["w_p"]),       # [P, 1, 1]
        helper.make_node("Mul", ["y", "w_p"], ["yw"]),
        helper.make_node("Reshape", ["yw", "shape_tah"], ["y_tah"]),                # [T, A, H]
        helper.make_node("Split", ["y_tah"], [f"y{a}" for a in range(top_k)], axis=1, num_outputs=top_k),
    ]
    acc = "y0"
    for a in range(1, top_k):                                                      # ((y0 + y1) + y2) ...
        nodes.append(helper.make_node("Add", [acc, f"y{a}"], [f"acc{a}"]))
        acc = f"acc{a}"
    nodes.append(helper.make_node("Reshape", [acc, "shape_out"], [naming.FFN_OUT]))  # [1, T, H]
    graph = helper.make_graph(
        nodes, "grouped_swiglu",
        [vi(naming.NORMED, f, [1, "T", hidden]), vi("expert_ids", i64, ["T", top_k]),
         vi("pair_weights", f, ["T", top_k]), vi("w_gate", f, ["E", hidden, inter]),
         vi("w_up", f, ["E", hidden, inter]), vi("w_down", f, ["E", inter, hidden])],
        [vi(naming.FFN_OUT, f, [1, "T", hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


def moe_graph(hidden: int, inter: int, num_experts: int, top_k: int, normalize: bool, half: bool = False) -> bytes:
    """A layer's routed experts on ``com.microsoft.MoE``, weights bound as inputs.

    Inputs: normed [1, T, H]; router_logits [1, T, E] (the op takes softmax, top-k and, with
    ``normalize``, renormalises the chosen weights: the routing of the fused families);
    w_gate_up [E, 2I, H] with gate and up rows interleaved (row 2i gate i, 2i+1 up i: the
    layout the CPU kernel computes exactly in fp32); w_down [E, H, I]. ``half``: fp16
    weights; the activations are cast to fp16 for the operator and its output back to fp32.
    """
    f = TensorProto.FLOAT
    w = TensorProto.FLOAT16 if half else f
    x, logits, y = ("xh", "logitsh", "yh") if half else ("x", "logits", "y")      # what the operator reads, writes
    vi = helper.make_tensor_value_info
    const = helper.make_tensor
    nodes = [
        helper.make_node("Constant", [], ["rows"], value=const("rows", TensorProto.INT64, [2], [-1, hidden])),
        helper.make_node("Constant", [], ["out"], value=const("out", TensorProto.INT64, [3], [1, -1, hidden])),
        helper.make_node("Constant", [], ["probs"], value=const("probs", TensorProto.INT64, [2], [-1, num_experts])),
        helper.make_node("Reshape", [naming.NORMED, "rows"], ["x"]),                   # [T, H]
        helper.make_node("Reshape", [naming.ROUTER_LOGITS, "probs"], ["logits"]),      # [T, E]
        *([helper.make_node("Cast", ["x"], [x], to=w), helper.make_node("Cast", ["logits"], [logits], to=w)]
          if half else []),
        helper.make_node("MoE", [x, logits, "w_gate_up", "", "w_down"], [y], domain="com.microsoft",
                         k=top_k, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=int(normalize),
                         activation_alpha=1.0, activation_beta=0.0, swiglu_limit=float("inf")),
        *([helper.make_node("Cast", [y], ["y"], to=f)] if half else []),
        helper.make_node("Reshape", ["y", "out"], [naming.FFN_OUT]),                   # [1, T, H]
    ]
    graph = helper.make_graph(
        nodes, "moe",
        [vi(naming.NORMED, f, [1, "T", hidden]), vi(naming.ROUTER_LOGITS, f, [1, "T", num_experts]),
         vi("w_gate_up", w, [num_experts, 2 * inter, hidden]), vi("w_down", w, [num_experts, hidden, inter])],
        [vi(naming.FFN_OUT, f, [1, "T", hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    return model.SerializeToString()


def copy_graph(n: int) -> bytes:
    """``n`` flat float arrays copied through: dst_i = src_i. Bound with each output at an
    address inside a device buffer, one run writes host arrays there."""
    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", [f"src{i}"], [f"dst{i}"]) for i in range(n)], "copy",
                              [vi(f"src{i}", f, ["N"]) for i in range(n)], [vi(f"dst{i}", f, ["N"]) for i in range(n)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def qmoe_graph(hidden: int, inter: int, num_experts: int, top_k: int, bits: int) -> bytes:
    """`moe_graph` over quantized weights (``com.microsoft.QMoE``; see tiers/quant.py for the
    layout): w_gate_up uint8 [E, 2I, H*bits/8] with s_gate_up [E, 2I], w_down uint8
    [E, H, I*bits/8] with s_down [E, H]."""
    f, u8 = TensorProto.FLOAT, TensorProto.UINT8
    vi = helper.make_tensor_value_info
    const = helper.make_tensor
    pack = 8 // bits
    nodes = [
        helper.make_node("Constant", [], ["rows"], value=const("rows", TensorProto.INT64, [2], [-1, hidden])),
        helper.make_node("Constant", [], ["out"], value=const("out", TensorProto.INT64, [3], [1, -1, hidden])),
        helper.make_node("Constant", [], ["probs"], value=const("probs", TensorProto.INT64, [2], [-1, num_experts])),
        helper.make_node("Reshape", [naming.NORMED, "rows"], ["x"]),
        helper.make_node("Reshape", [naming.ROUTER_LOGITS, "probs"], ["logits"]),
        helper.make_node("QMoE", ["x", "logits", "w_gate_up", "s_gate_up", "", "w_down", "s_down"], ["y"],
                         domain="com.microsoft", k=top_k, activation_type="swiglu", swiglu_fusion=1,
                         normalize_routing_weights=1, expert_weight_bits=bits, activation_alpha=1.0,
                         activation_beta=0.0, swiglu_limit=float("inf")),
        helper.make_node("Reshape", ["y", "out"], [naming.FFN_OUT]),
    ]
    graph = helper.make_graph(
        nodes, "qmoe",
        [vi(naming.NORMED, f, [1, "T", hidden]), vi(naming.ROUTER_LOGITS, f, [1, "T", num_experts]),
         vi("w_gate_up", u8, [num_experts, 2 * inter, hidden // pack]), vi("s_gate_up", f, [num_experts, 2 * inter]),
         vi("w_down", u8, [num_experts, hidden, inter // pack]), vi("s_down", f, [num_experts, hidden])],
        [vi(naming.FFN_OUT, f, [1, "T", hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    return model.SerializeToString()


def gathered_qmoe_graph(hidden: int, inter: int, top_k: int, bits: int, blocks: tuple[int, int]) -> bytes:
    """`moe_graph` in fp16 over the entries of an integer stack that one call uses: the
    CUDA lane for integer slots (ONNX Runtime's CUDA QMoE reads another weight layout).

    Inputs: normed [1, T, H]; router_logits [1, T, A] over the A gathered entries;
    entries [A] int64, the stack entries gathered (A >= ``top_k``); the stack's w_gate_up
    uint8 [E, 2I, H*bits/8] with s_gate_up fp16 [E, 2I, H / blocks[0]] and w_down uint8
    [E, H, I*bits/8] with s_down fp16 [E, H, I / blocks[1]] (tiers/quant.py's layout with each
    row's scale repeated per block: the operator's blocks are powers of two). One
    ``com.microsoft.GatherBlockQuantized`` per weight gathers and dequantizes the entries
    to fp16 for the fp16 MoE operator: a call reads the entries it runs.
    """
    f, h, u8, i64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT64
    vi = helper.make_tensor_value_info
    const = helper.make_tensor
    pack = 8 // bits
    nodes = [
        helper.make_node("Constant", [], ["rows"], value=const("rows", i64, [2], [-1, hidden])),
        helper.make_node("Constant", [], ["out"], value=const("out", i64, [3], [1, -1, hidden])),
        helper.make_node("Constant", [], ["axis0"], value=const("axis0", i64, [1], [0])),
        helper.make_node("Reshape", [naming.NORMED, "rows"], ["x"]),                   # [T, H]
        helper.make_node("Cast", ["x"], ["xh"], to=h),
        helper.make_node("Squeeze", [naming.ROUTER_LOGITS, "axis0"], ["logits"]),     # [T, A]
        helper.make_node("Cast", ["logits"], ["logitsh"], to=h),
        *(helper.make_node("GatherBlockQuantized", [w, naming.ENTRIES, s], [f"{w}_a"], domain="com.microsoft",
                           gather_axis=0, quantize_axis=2, block_size=block, bits=bits)          # [A, rows, cols] fp16
          for w, s, block in (("w_gate_up", "s_gate_up", blocks[0]), ("w_down", "s_down", blocks[1]))),
        helper.make_node("MoE", ["xh", "logitsh", "w_gate_up_a", "", "w_down_a"], ["yh"], domain="com.microsoft",
                         k=top_k, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1,
                         activation_alpha=1.0, activation_beta=0.0, swiglu_limit=float("inf")),
        helper.make_node("Cast", ["yh"], ["y"], to=f),
        helper.make_node("Reshape", ["y", "out"], [naming.FFN_OUT]),                   # [1, T, H]
    ]
    graph = helper.make_graph(
        nodes, "gathered_qmoe",
        [vi(naming.NORMED, f, [1, "T", hidden]), vi(naming.ROUTER_LOGITS, f, [1, "T", "A"]),
         vi(naming.ENTRIES, i64, ["A"]),
         vi("w_gate_up", u8, ["E", 2 * inter, hidden // pack]),
         vi("s_gate_up", h, ["E", 2 * inter, hidden // blocks[0]]),
         vi("w_down", u8, ["E", hidden, inter // pack]), vi("s_down", h, ["E", hidden, inter // blocks[1]])],
        [vi(naming.FFN_OUT, f, [1, "T", hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    return model.SerializeToString()
