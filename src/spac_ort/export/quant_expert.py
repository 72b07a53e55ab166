"""Experts stored as 8- or 4-bit integers (``spac-export --expert-quant int8|int4``).

An expert's file holds the arrays the runtime's quantized stacks take (`runtime.tiers.quant`:
gate/up interleaved [2I, H] and down [H, I], symmetric, one fp32 scale per output row,
4-bit values two to a byte), so the runtime copies them as they are. Its graph computes
the expert from them with standard operators (dequantize, then SwiGLU), so a session can
run it and the export can check it:

    normed [1, T, H] -> x @ dequant(w_gate_up)^T -> gate = even columns, up = odd ones
                     -> silu(gate) * up @ dequant(w_down)^T -> ffn_out [1, T, H]
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import naming
from ..runtime.tiers.quant import ExpertLayout, dequantize
from . import onnx_io

OPSET = 18                      # BitwiseAnd


def _dequant(nodes: list, name: str, scale: str, bits: int, rows: int, cols: int) -> str:
    """Nodes turning the packed uint8 ``name`` and its row scales into fp32 [rows, cols]."""
    c = lambda v, dt=TensorProto.UINT8: helper.make_tensor(f"{name}_{v}", dt, [], [v])  # noqa: E731
    q = f"{name}_q"
    if bits == 8:
        nodes.append(helper.make_node("Cast", [name], [q], to=TensorProto.FLOAT))
        offset = 128.0
    else:
        nodes += [helper.make_node("Constant", [], [f"{name}_15"], value=c(15)),
                  helper.make_node("Constant", [], [f"{name}_4"], value=c(4)),
                  helper.make_node("BitwiseAnd", [name, f"{name}_15"], [f"{name}_lo"]),
                  helper.make_node("BitShift", [name, f"{name}_4"], [f"{name}_hi"], direction="RIGHT"),
                  helper.make_node("Constant", [], [f"{name}_ax"],
                                   value=helper.make_tensor(f"{name}_ax", TensorProto.INT64, [1], [-1])),
                  helper.make_node("Unsqueeze", [f"{name}_lo", f"{name}_ax"], [f"{name}_lo3"]),
                  helper.make_node("Unsqueeze", [f"{name}_hi", f"{name}_ax"], [f"{name}_hi3"]),
                  helper.make_node("Concat", [f"{name}_lo3", f"{name}_hi3"], [f"{name}_pairs"], axis=-1),
                  helper.make_node("Constant", [], [f"{name}_shape"],
                                   value=helper.make_tensor(f"{name}_shape", TensorProto.INT64, [2], [rows, cols])),
                  helper.make_node("Reshape", [f"{name}_pairs", f"{name}_shape"], [f"{name}_u"]),
                  helper.make_node("Cast", [f"{name}_u"], [q], to=TensorProto.FLOAT)]
        offset = 8.0
    nodes += [helper.make_node("Constant", [], [f"{name}_off"], value=c(offset, TensorProto.FLOAT)),
              helper.make_node("Sub", [q, f"{name}_off"], [f"{name}_c"]),
              helper.make_node("Constant", [], [f"{name}_one"],
                               value=helper.make_tensor(f"{name}_one", TensorProto.INT64, [1], [1])),
              helper.make_node("Unsqueeze", [scale, f"{name}_one"], [f"{name}_s"]),
              helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [f"{name}_w"])]
    return f"{name}_w"


def template(hidden: int, inter: int, bits: int) -> onnx_io.Template:
    """The graph of one quantized expert, its weights to be written by `onnx_io.write`."""
    layout = ExpertLayout(hidden, inter, bits)
    (normed,), (out,) = naming.IO_NAMES[naming.PieceKind.EXPERT]
    inits = [helper.make_tensor(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), list(sh), np.zeros(sh, dt).tobytes(),
                                raw=True) for n, (sh, dt) in zip(layout.names, layout.shapes)]
    nodes: list = []
    gate_up = _dequant(nodes, "w_gate_up", "s_gate_up", bits, 2 * inter, hidden)
    down = _dequant(nodes, "w_down", "s_down", bits, hidden, inter)
    ints = lambda n, v: helper.make_node("Constant", [], [n], value=helper.make_tensor(n, TensorProto.INT64, [1], [v]))  # noqa: E731
    nodes += [helper.make_node("Transpose", [gate_up], ["gu_t"], perm=[1, 0]),
              helper.make_node("MatMul", [normed, "gu_t"], ["h"]),
              ints("zero", 0), ints("one", 1), ints("end", 2 * inter), ints("last", -1), ints("two", 2),
              helper.make_node("Slice", ["h", "zero", "end", "last", "two"], ["gate"]),
              helper.make_node("Slice", ["h", "one", "end", "last", "two"], ["up"]),
              helper.make_node("Sigmoid", ["gate"], ["sig"]),
              helper.make_node("Mul", ["gate", "sig"], ["silu"]),
              helper.make_node("Mul", ["silu", "up"], ["act"]),
              helper.make_node("Transpose", [down], ["down_t"], perm=[1, 0]),
              helper.make_node("MatMul", ["act", "down_t"], [out])]
    graph = helper.make_graph(
        nodes, f"expert_int{bits}",
        [helper.make_tensor_value_info(normed, TensorProto.FLOAT, [1, "T", hidden])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, "T", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return onnx_io.Template(model, tuple(layout.names))


def reference(x: np.ndarray, arrays: tuple[np.ndarray, ...], bits: int) -> np.ndarray:
    """What the quantized expert computes, in numpy: x [1, T, H] -> [1, T, H]."""
    gate_up = dequantize(arrays[0], arrays[1], bits)
    down = dequantize(arrays[2], arrays[3], bits)
    h = x @ gate_up.T
    gate, up = h[..., 0::2], h[..., 1::2]
    return ((gate / (1.0 + np.exp(-gate))) * up) @ down.T
