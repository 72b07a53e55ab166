"""Graph conversions for deployment bundles, on ONNX Runtime's own tooling:

- `to_ort`: an ONNX graph as an ORT-format model (what onnxruntime-android loads without
  the ONNX parser; weights inside), optimized at the hardware-independent basic level so
  that NPU providers still see standard operators;
- `fixed_tokens`: a copy whose token dimension is a number (NNAPI and CoreML only take
  nodes with fixed shapes);
- `operators_config`: the required-operators file for a reduced ORT build
  (``build.sh --include_ops_by_config``);
- `usability`: ORT's mobile usability report (how NNAPI and CoreML would partition it);
- `to_fp16`: a copy with fp16 weights and arithmetic and fp32 inputs and outputs (what
  the CUDA provider's fused attention needs, at half the bytes per pass).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import onnx

from .. import naming
from ..runtime.sessions import CPU, ort

# the symbolic token dimension of the bundle's graphs: 'T' (spac-export's own graphs) and
# 'sequence_length' (optimum's draft export)
TOKEN_DIMS = ("T", "sequence_length")


def to_ort(src: Path, dst: Path) -> None:
    """Write ``src`` (an ONNX file, external data beside it) as ORT format to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=[CPU])


def to_ort_bytes(model: bytes, dst: Path) -> None:
    """`to_ort` for a graph held in memory (the runtime's own MoE and copy graphs)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "graph.onnx"
        src.write_bytes(model)
        to_ort(src, dst)


@contextlib.contextmanager
def _own_copy(src: Path) -> Iterator[Path]:
    """A copy of the graph ``src`` and its external data files in a temp directory. onnx
    refuses to read external data from a file with several hard links (as bundles copied
    with ``cp -al`` have), and its tools read the data through onnx."""
    with tempfile.TemporaryDirectory() as tmp:
        for f in src.parent.iterdir():
            if f.name == src.name or f.name.startswith(src.name + "."):
                shutil.copyfile(f, Path(tmp) / f.name)
        yield Path(tmp) / src.name


def fixed_tokens(src: Path, dst: Path, tokens: int) -> None:
    """``src`` with its token dimension set to ``tokens``, as ORT format at ``dst`` (other
    dimensions, such as the KV cache's past length, stay symbolic)."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    with _own_copy(src) as own:
        model = onnx.load(str(own), load_external_data=False)   # the weights stay where they are
        for name in TOKEN_DIMS:                       # inputs, outputs and value infos that name it
            make_dim_param_fixed(model.graph, name, tokens)
        onnx.save(model, str(own))
        to_ort(own, dst)


def to_fp16(src: Path, dst: Path) -> None:
    """``src`` with its float tensors in fp16, its inputs and outputs kept fp32 (casts at
    the edges), written to ``dst`` with its weights in ``dst``.data; but a fused graph's KV
    cache (GroupQueryAttention's past and present, updated in place) becomes fp16: cast at
    the edges, every call would convert the whole cache twice and the attention could not
    update it in place. TopK and the other operators ONNX Runtime's converter blocks stay
    fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _own_copy(src) as own:
        model = onnx.load(str(own))
        names = [v.name for v in (*model.graph.input, *model.graph.output)]
        fused = naming.SEQLENS_K in names
        keep = [n for n in names if not (fused and naming.is_kv(n))]
        half = convert_float_to_float16(model, keep_io_types=keep, disable_shape_infer=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = dst.with_name(dst.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(half, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=0)


def operators_config(models: Sequence[Path], dst: Path) -> None:
    """The operators (and opsets) the ORT-format ``models`` use, for a reduced build."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    quiet = logging.getLogger("ort_format_model.utils")      # it logs "Created config in <temp dir>"
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        create_config_from_models(list(models), dst, enable_type_reduction=False)
    finally:
        quiet.setLevel(level)


def usability(src: Path) -> str:
    """ORT's mobile usability report for ``src``, as text."""
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    stream = io.StringIO()
    logger = logging.getLogger(f"spac_ort.usability.{src.name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        with _own_copy(src) as own:
            analyze_model(own, skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().replace(str(own), src.name)
