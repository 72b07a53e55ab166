"""Write every piece of a bundle: trace each graph shape once, substitute weights for
the other layers and experts, check each written file against its torch module."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import naming
from ..errors import CheckpointError, ParityError
from ..manifest import ExpertTable, FileEntry, LayerKind, PieceIO
from ..manifest_checks import EXPERT_BITS
from ..naming import Graphs, PieceKind
from ..runtime.sessions import Piece
from ..runtime.tiers.pools import interleaved
from ..runtime.tiers.quant import ExpertLayout
from . import fused, fused_check, fused_head, onnx_io, quant_expert
from .adapters.base import Adapter
from .modules import Attention, Embed, Head, Router, SwiGLU
from .weights import AttentionWeights

Progress = Callable[[str, int, int], None]

_T = {1: "T"}
DYNAMIC_AXES: dict[PieceKind, dict[str, dict[int, str]]] = {
    PieceKind.EMBED: {naming.INPUT_IDS: _T, naming.HIDDEN: _T},
    PieceKind.ATTENTION: {naming.HIDDEN: _T, naming.POSITION_IDS: _T, naming.PAST_KEY: {2: "P"},
                          naming.PAST_VALUE: {2: "P"}, naming.HIDDEN_OUT: _T, naming.NORMED: _T,
                          naming.PRESENT_KEY: {2: "S"}, naming.PRESENT_VALUE: {2: "S"}},
    PieceKind.ROUTER: {naming.NORMED: _T, naming.TOPK_WEIGHTS: _T, naming.TOPK_IDS: _T},
    PieceKind.EXPERT: {naming.NORMED: _T, naming.FFN_OUT: _T},
    PieceKind.SHARED_EXPERT: {naming.NORMED: _T, naming.FFN_OUT: _T},
    PieceKind.DENSE_MLP: {naming.NORMED: _T, naming.FFN_OUT: _T},
    PieceKind.HEAD: {naming.HIDDEN: _T, naming.LOGITS: _T},
}
RTOL = 1e-4   # max |onnx - torch| / max(1, max |torch|) per output


def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in ``t``: its float64 sum is finite exactly then (float32 values cannot
    overflow it), in one pass and without a mask the size of the tensor."""
    return math.isfinite(float(t.detach().sum(dtype=torch.float64)))


@dataclass
class PieceWriter:
    root: Path
    adapter: Adapter
    progress: Optional[Progress] = None
    check_interrupt: Callable[[], None] = lambda: None
    seed: int = 0
    head_quant: str = "none"
    expert_quant: str = "none"       # "int8" / "int4": experts stored as integers (`quant_expert`)
    files: dict[str, FileEntry] = field(default_factory=dict)
    max_error: float = 0.0
    _templates: dict[PieceKind, onnx_io.Template] = field(default_factory=dict)

    # ---- generated inputs --------------------------------------------------------------
    def _inputs(self, kind: PieceKind, t: int = 5, past: int = 3) -> tuple:
        g = torch.Generator().manual_seed(self.seed)
        d = self.adapter.spec.dims
        if kind is PieceKind.EMBED:
            return (torch.randint(0, d.vocab_size, (1, t), generator=g),)
        if kind is PieceKind.ATTENTION:
            return (torch.randn(1, t, d.hidden_size, generator=g),
                    torch.arange(past, past + t).reshape(1, t),
                    torch.randn(1, d.cache_heads, past, d.cache_key_dim, generator=g),
                    torch.randn(1, d.cache_heads, past, d.cache_value_dim, generator=g))
        return (torch.randn(1, t, d.hidden_size, generator=g),)

    # ---- one piece -----------------------------------------------------------------------
    def write(self, kind: PieceKind, module: torch.nn.Module, rel: str) -> None:
        self.check_interrupt()
        self.check_weights(module, rel)
        module.eval()
        template = self._templates.get(kind)
        if template is None:
            template = self._templates[kind] = onnx_io.trace(module, self._inputs(kind, 3, 2), kind,
                                                             DYNAMIC_AXES[kind])
        written = onnx_io.write(template, onnx_io.module_weights(module, template.weight_names), self.root / rel, rel)
        self.files[rel] = written.graph
        self.files[naming.data_path(rel)] = written.data
        self.check(kind, module, rel)

    def write_quantized_expert(self, module: torch.nn.Module, rel: str) -> None:
        """An expert as 8- or 4-bit integers (`quant_expert`), checked against numpy on what
        it stores."""
        self.check_interrupt()
        self.check_weights(module, rel)
        d, bits = self.adapter.spec.dims, EXPERT_BITS[self.expert_quant]
        template = self._templates.get(PieceKind.EXPERT)
        if template is None:
            template = self._templates[PieceKind.EXPERT] = quant_expert.template(d.hidden_size,
                                                                                 d.expert_intermediate, bits)
        layout = ExpertLayout(d.hidden_size, d.expert_intermediate, bits)
        w = onnx_io.module_weights(module, ("w_gate", "w_up", "w_down"))
        arrays = layout.encode(*interleaved(w["w_gate"], w["w_up"], w["w_down"]))
        written = onnx_io.write(template, dict(zip(layout.names, arrays)), self.root / rel, rel)
        self.files[rel] = written.graph
        self.files[naming.data_path(rel)] = written.data
        (x,) = self._inputs(PieceKind.EXPERT)
        got = Piece(self.root / rel)(x.numpy())[0]
        want = quant_expert.reference(x.numpy(), arrays, bits)
        self._record(rel, float(np.abs(want - got).max()) / max(1.0, float(np.abs(want).max())), None, track=False)

    def check_weights(self, module: torch.nn.Module, rel: str) -> None:
        """Non-finite weights fail parity as if the export were wrong: name the corrupt tensor."""
        for name, p in module.named_parameters():
            if not _finite(p):
                raise CheckpointError(f"{self._source(rel, name)} has NaN or Inf values: the checkpoint in "
                                      f"{self.adapter.w.model_dir} is corrupt; re-download or fix it")

    def _source(self, rel: str, param: str) -> str:
        """The checkpoint tensor behind a non-finite weight of piece ``rel``: the first
        non-finite tensor of its layer (of its expert first), else the piece's weight."""
        store = self.adapter.w
        m = re.match(r"layers/(\d+)/(?:experts/(\d+))?", rel)
        if m is None:
            names = [n for n in store.names() if "layers." not in n]
        else:
            names = [n for n in store.names() if f"layers.{int(m[1])}." in n]
            if m[2] is not None:
                names.sort(key=lambda n: f"experts.{int(m[2])}." not in n)
        for name in names:
            if not _finite(store.get(name)):
                return f"tensor {name}"
        return f"weight {param} of {rel}"

    def write_fused(self, kind: PieceKind, rel: str, modules: tuple[torch.nn.Module, ...],
                    weights: Optional[AttentionWeights] = None) -> None:
        """Build a fused graph from ``weights`` and the router (``modules``: attention
        [+ router]) or from the head (``modules``: head), write it, and check it against
        those modules."""
        self.check_interrupt()
        for module in modules:
            self.check_weights(module, rel)
            module.eval()
        spec = self.adapter.spec
        d, eps = spec.dims, spec.attention.rms_eps
        if kind in (PieceKind.FINAL, PieceKind.FINAL_GREEDY):
            head = modules[0]
            template, weights = (fused_head.final_graph(d, eps, head.w_norm, head.w_lm_head.t(), self.head_quant)
                                 if kind is PieceKind.FINAL else
                                 fused_head.greedy_graph(d, eps, head.w_norm, head.w_lm_head.t()))
            graph_in, torch_in = fused_check.final_case(d, 5, self.seed)
            want = fused_check.final_reference(head, torch_in)
        else:
            attention, router = modules[0], (modules[1] if len(modules) > 1 else None)
            template, weights = fused.layer_graph(d, spec.attention, spec.routing, weights,
                                                  router.w_router.t() if router is not None else None)
            graph_in, torch_in = fused_check.layer_case(d, spec.attention.rope_theta, 5, 3, self.seed)
            want = fused_check.layer_reference(attention, router, torch_in)
        written = onnx_io.write(template, weights, self.root / rel, rel)
        self.files[rel] = written.graph
        self.files[naming.data_path(rel)] = written.data
        piece = Piece(self.root / rel)
        got = dict(zip(piece.outputs, piece(*[graph_in[name] for name in piece.inputs])))
        if kind is PieceKind.FINAL_GREEDY:
            self._record(rel, *fused_check.compare_greedy(got, want))
            return
        err, differs = fused_check.compare(got, want)
        if kind is PieceKind.FINAL and self.head_quant == "int8":      # 8-bit weights and activations
            self._record(rel, err, differs, fused_check.INT8_RTOL, track=False)
        else:
            self._record(rel, err, differs)

    def _record(self, rel: str, err: float, differs: Optional[str], tol: float = RTOL, track: bool = True) -> None:
        if differs is not None:
            raise ParityError(f"{rel}: output {differs} differs from the PyTorch reference; "
                              "report this model to the spac-ort maintainers")
        if track:
            self.max_error = max(self.max_error, err)
        if not err <= tol:
            raise ParityError(f"{rel}: output differs from the PyTorch reference by {err:.2e} "
                              f"(tolerance {tol:.0e}); report this model to the spac-ort maintainers")

    def check(self, kind: PieceKind, module: torch.nn.Module, rel: str) -> None:
        args = self._inputs(kind)
        with torch.no_grad():
            ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = Piece(self.root / rel)(*[a.numpy() for a in args])
        for name, r, o in zip(naming.IO_NAMES[kind][1], ref, got):
            r = r.numpy()
            if r.dtype.kind in "iu":
                if not np.array_equal(r, o):
                    raise ParityError(f"{rel}: output {name} differs from the PyTorch reference; "
                                      "report this model to the spac-ort maintainers")
                continue
            err = float(np.abs(r - o).max()) / max(1.0, float(np.abs(r).max()))
            self.max_error = max(self.max_error, err)
            if not err <= RTOL:
                raise ParityError(f"{rel}: output {name} differs from the PyTorch reference by {err:.2e} "
                                  f"(tolerance {RTOL:.0e}); report this model to the spac-ort maintainers")

    # ---- the whole model ---------------------------------------------------------------
    def write_all(self, graphs: Graphs = Graphs.PORTABLE) -> tuple[dict[str, PieceIO], ExpertTable]:
        a, spec = self.adapter, self.adapter.spec
        d = spec.dims
        eps = spec.attention.rms_eps
        self.write(PieceKind.EMBED, Embed(a.embed()), naming.EMBED)
        if graphs is Graphs.FUSED:
            head = Head(a.final_norm(), a.lm_head(), eps)
            self.write_fused(PieceKind.FINAL, naming.FINAL, (head,))
            if self.head_quant == "none":
                self.write_fused(PieceKind.FINAL_GREEDY, naming.FINAL_GREEDY, (head,))
        else:
            self.write(PieceKind.HEAD, Head(a.final_norm(), a.lm_head(), eps), naming.HEAD)
        width = max(3, len(str(d.num_experts - 1)))
        template = f"layers/{{layer:03d}}/experts/{{expert:0{width}d}}.onnx"
        graph_sha: list[tuple[str, ...]] = []
        data_sha: list[tuple[str, ...]] = []
        sizes: set[tuple[int, int]] = set()
        moe_layers = [i for i, k in enumerate(spec.layer_kinds) if k is LayerKind.MOE]
        total, done = len(moe_layers) * d.num_experts, 0
        for layer, kind in enumerate(spec.layer_kinds):
            if graphs is Graphs.FUSED:
                self._write_fused_layer(layer, kind)
            else:
                self.write(PieceKind.ATTENTION, a.attention_module(layer),
                           naming.layer_piece(PieceKind.ATTENTION, layer))
            if kind is LayerKind.DENSE:
                self.write(PieceKind.DENSE_MLP, SwiGLU(a.dense_mlp(layer)),
                           naming.layer_piece(PieceKind.DENSE_MLP, layer))
                graph_sha.append(())
                data_sha.append(())
                continue
            if graphs is Graphs.PORTABLE:
                self.write(PieceKind.ROUTER, Router(a.router(layer), d.top_k, spec.routing, a.router_bias(layer)),
                           naming.layer_piece(PieceKind.ROUTER, layer))
            if d.shared_expert_intermediate:
                mlp, gate = a.shared_expert(layer)
                self.write(PieceKind.SHARED_EXPERT, SwiGLU(mlp, gate),
                           naming.layer_piece(PieceKind.SHARED_EXPERT, layer))
            g_row, d_row = [], []
            for e in range(d.num_experts):
                rel = naming.expert_path(layer, e, template)
                if self.expert_quant == "none":
                    self.write(PieceKind.EXPERT, SwiGLU(a.expert(layer, e)), rel)
                else:
                    self.write_quantized_expert(SwiGLU(a.expert(layer, e)), rel)
                g, w = self.files.pop(rel), self.files.pop(naming.data_path(rel))
                g_row.append(g.sha256)
                d_row.append(w.sha256)
                sizes.add((g.size, w.size))
                done += 1
                if self.progress:
                    self.progress("experts", done, total)
            graph_sha.append(tuple(g_row))
            data_sha.append(tuple(d_row))
        assert len(sizes) <= 1, f"expert files differ in size: {sizes}"
        g_size, d_size = sizes.pop() if sizes else (0, 0)
        io = {k.value: PieceIO(*naming.IO_NAMES[k]) for k in naming.VARIANT_KINDS[graphs]}
        precision = "fp32" if self.expert_quant == "none" else self.expert_quant
        return io, ExpertTable(template, g_size, d_size, tuple(graph_sha), tuple(data_sha), precision)

    def _write_fused_layer(self, layer: int, kind: LayerKind) -> None:
        a, spec = self.adapter, self.adapter.spec
        w = a.attention(layer)
        attention = Attention(w, spec.dims, spec.attention)
        if kind is LayerKind.MOE:
            router = Router(a.router(layer), spec.dims.top_k, spec.routing, a.router_bias(layer))
            self.write_fused(PieceKind.LAYER, naming.layer_piece(PieceKind.LAYER, layer), (attention, router), w)
        else:
            self.write_fused(PieceKind.DENSE_LAYER, naming.layer_piece(PieceKind.DENSE_LAYER, layer), (attention,), w)
