"""Expert compute pools over one shared graph whose weights are graph inputs.

- `SlotPool` (fast tier): N slots of device buffers (OrtValues on the fast provider's
  device); a fetch copies an expert's host arrays into a slot; a run binds that slot.
  On a machine without an accelerator it runs on a second CPU pool, which stands in for
  the fast device so the whole machinery runs; copies are then real host memcpys.
- `HostPool` (slow tier): the CPU provider binding the host arrays directly (zero copy).

Both tiers run the same graph, so an expert's output is the same wherever it runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from onnx import TensorProto, helper

from .. import naming
from .sessions import CPU, CUDA, ort, session_options
from .store import WEIGHTS


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


class HostPool:
    """Runs any expert from host arrays on the CPU."""

    def __init__(self, hidden: int, inter: int):
        self.session = ort.InferenceSession(swiglu_graph(hidden, inter), session_options(), providers=[CPU])

    def run(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        b = self.session.io_binding()
        b.bind_cpu_input(naming.NORMED, x)
        for name, w in zip(WEIGHTS, weights):
            b.bind_cpu_input(name, w)
        b.bind_output(naming.FFN_OUT)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]


class SlotPool:
    """Fast-tier slots: per slot, one device buffer per weight."""

    def __init__(self, num_slots: int, hidden: int, inter: int, providers: Sequence[str] = (CPU,)):
        self.providers = list(providers)
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.stand_in = self.device == "cpu"
        self.session = ort.InferenceSession(swiglu_graph(hidden, inter), session_options(), providers=self.providers)
        shapes = ((hidden, inter), (hidden, inter), (inter, hidden))
        self.buffers = [[ort.OrtValue.ortvalue_from_shape_and_type(list(sh), np.float32, self.device, 0)
                         for sh in shapes] for _ in range(num_slots)]
        self.bytes_copied = 0

    def load(self, slot: int, weights: Sequence[np.ndarray]) -> None:
        """Copy an expert's host arrays into the slot's device buffers."""
        for buf, w in zip(self.buffers[slot], weights):
            buf.update_inplace(w)
            self.bytes_copied += w.nbytes

    def run(self, slot: int, x: np.ndarray) -> np.ndarray:
        b = self.session.io_binding()
        b.bind_cpu_input(naming.NORMED, x)
        for name, buf in zip(WEIGHTS, self.buffers[slot]):
            b.bind_ortvalue_input(name, buf)
        b.bind_output(naming.FFN_OUT)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]


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
