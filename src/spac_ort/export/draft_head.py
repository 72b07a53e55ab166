"""An 8-bit lm_head for the draft graph: the MatMul that writes ``logits`` becomes a
``com.microsoft.MatMulNBits`` over blockwise int8 weights (accuracy level 4).

The draft only proposes tokens and the target verifies every one, so its precision
never changes the output; a quarter of the bytes to read per draft token changes its cost.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from .. import naming
from .fused import INT8_BLOCK, MS, int8_blocks


def quantize_head(graph: Path) -> bool:
    """Rewrite ``graph`` in place; False (graph untouched) when its logits do not come from
    a MatMul over a constant [K, N] weight with K a multiple of the block size."""
    model = onnx.load(str(graph))
    g = model.graph
    node = next((n for n in g.node if naming.LOGITS in n.output), None)
    inits = {i.name: i for i in g.initializer}
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        return False
    weight = numpy_helper.to_array(inits[node.input[1]])
    if weight.ndim != 2 or weight.shape[0] % INT8_BLOCK:
        return False
    k, n = weight.shape
    q, scales = int8_blocks(weight)
    name = node.input[1]
    new = helper.make_node("MatMulNBits", [node.input[0], f"{name}_q8", f"{name}_scales"], list(node.output),
                           name=f"{node.name}_q8", domain=MS, K=k, N=n, bits=8, block_size=INT8_BLOCK,
                           accuracy_level=4)
    index = list(g.node).index(node)
    g.node.remove(node)
    g.node.insert(index, new)
    if not any(name in other.input for other in g.node):
        g.initializer.remove(inits[name])
    g.initializer.extend([numpy_helper.from_array(q, f"{name}_q8"), numpy_helper.from_array(scales, f"{name}_scales")])
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    onnx.save(model, str(graph))
    return True
