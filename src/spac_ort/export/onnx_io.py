"""Trace a wrapper module to ONNX once, then write any number of graph files from that
template by substituting weights, each graph with its weights as external data."""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from .. import naming
from ..errors import SpacError
from ..manifest import FileEntry

OPSET = 17
ALIGN = 64   # external tensors start on 64-byte boundaries (mmap friendly)


@dataclass(frozen=True)
class Template:
    """A traced graph whose weight initializers have been emptied."""

    proto: onnx.ModelProto
    weight_names: tuple[str, ...]


@dataclass(frozen=True)
class Written:
    graph: FileEntry
    data: FileEntry


def trace(module: torch.nn.Module, args: tuple, kind: naming.PieceKind,
          dynamic_axes: dict[str, dict[int, str]]) -> Template:
    inputs, outputs = naming.IO_NAMES[kind]
    # Trace a copy with distinct random weights: exporters merge initializers of equal
    # value (norm weights of ones), which would break substitution by name.
    module = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    params = {n for n, p in module.named_parameters() if p is not None}
    inits = {i.name for i in proto.graph.initializer}
    lost = sorted(params - inits)
    if lost:   # an exporter folded a weight into another constant: substitution would be wrong
        raise SpacError(f"internal export error: weights {lost} of {kind.value} lost their names in tracing")
    for init in proto.graph.initializer:
        if init.name in params:
            init.ClearField("raw_data")
    return Template(proto, tuple(sorted(params)))


def write(template: Template, weights: dict[str, np.ndarray], graph_path: Path, rel: str) -> Written:
    """Write ``graph_path`` and ``graph_path.data`` from the template and these weights."""
    model = onnx.ModelProto()
    model.CopyFrom(template.proto)
    data_file = graph_path.with_name(graph_path.name + naming.DATA_SUFFIX)
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    h_data = hashlib.sha256()
    offset = 0
    with open(data_file, "wb") as f:
        for init in model.graph.initializer:
            if init.name not in template.weight_names:
                continue
            arr = np.ascontiguousarray(weights[init.name])
            if tuple(arr.shape) != tuple(init.dims):
                raise SpacError(f"internal export error: {rel} weight {init.name} has shape "
                                f"{arr.shape}, graph expects {tuple(init.dims)}")
            pad = (-offset) % ALIGN
            if pad:
                f.write(b"\0" * pad)
                h_data.update(b"\0" * pad)
                offset += pad
            raw = arr.tobytes()
            f.write(raw)
            h_data.update(raw)
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", data_file.name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    blob = model.SerializeToString()
    graph_path.write_bytes(blob)
    return Written(FileEntry(len(blob), hashlib.sha256(blob).hexdigest()),
                   FileEntry(offset, h_data.hexdigest()))


def module_weights(module: torch.nn.Module, names: Sequence[str]) -> dict[str, np.ndarray]:
    params = dict(module.named_parameters())
    return {n: params[n].detach().numpy() for n in names}
