"""`export_bundle`: checkpoint directory -> verified bundle directory, atomically.

    read config + weights -> adapter -> ModelSpec
    check the target; remove .NAME.partial-PID-* left by dead exports
    temp dir .NAME.partial-PID-XXXX next to the target:
                                  pieces (each checked)  tokenizer  manifest
                                  whole-model parity against transformers
                                  directory modes 0o777 & ~umask
    under .NAME.lock: re-check the target, rename temp dir -> target
                                  (no-replace; with --force an atomic swap)
    any failure, Ctrl-C or SIGTERM removes the temp dir
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import __version__, naming
from ..errors import ConfigError, UnsupportedModelError
from ..manifest import DType, Manifest
from ..naming import Graphs
from ..runtime.tiers.quant import bits_of
from . import fused, fused_check, fused_head
from .adapters import adapter_for
from .adapters.base import Adapter
from .checkpoint import WeightStore, read_config
from .draft import export_draft
from .install import check_target, install, make_temp_dir, open_modes, remove_stale_partials
from .interrupt import DeferredInterrupt
from .onnx_io import OPSET
from .pieces import PieceWriter
from .tokenizer_files import copy_tokenizer
from .verify import MODEL_RTOL, check_model

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportOptions:
    model_dir: Path
    out_dir: Path
    force: bool = False
    check_model: bool = True
    draft_dir: Optional[Path] = None
    graphs: str = "auto"      # "fused", "portable", or "auto": fused where the family has them
    head_quant: str = "none"  # "int8": lm_head as 8-bit MatMulNBits (fused graphs only)
    draft_head_quant: str = "int8"   # the fused draft's lm_head (the draft never changes the output)
    expert_quant: str = "none"       # "int8" / "int4": experts stored as integers (no whole-model parity check)


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    manifest: Manifest
    seconds: float
    piece_error: float    # worst relative error of a piece against its torch module
    model_error: float    # relative error of the stitched model's logits against transformers


def _eos_ids(model_dir: Path, config_eos: tuple[int, ...]) -> tuple[int, ...]:
    ids = list(config_eos)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        except json.JSONDecodeError:
            eos = None
        for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []):
            if e not in ids:
                ids.append(int(e))
    return tuple(ids)


GRAPH_CHOICES = ("auto", "fused", "portable")


def graph_variant(choice: str, adapter: Adapter) -> Graphs:
    """The graph variant to export: ``auto`` is fused unless the family has no fused graphs
    (latent attention, sigmoid or group-limited routing)."""
    if choice not in GRAPH_CHOICES:
        raise ConfigError(f"unknown graph variant '{choice}'; use one of {', '.join(GRAPH_CHOICES)}")
    if choice == "portable":
        return Graphs.PORTABLE
    mla = type(adapter).attention_module is not Adapter.attention_module
    try:
        fused.check_supported(adapter.spec.dims, adapter.spec.routing, mla)
    except UnsupportedModelError:
        if choice == "fused":
            raise
        return Graphs.PORTABLE
    return Graphs.FUSED


def export_bundle(opts: ExportOptions, progress: Optional[Progress] = None) -> ExportResult:
    """Export ``opts.model_dir`` to the bundle ``opts.out_dir``. Nothing but the finished
    bundle is left behind; SIGINT raises KeyboardInterrupt and SIGTERM `Terminated` at the
    next piece boundary. Raises `BundleError` when the target is taken (at the start or,
    by a concurrent export, at install time) and ``opts.force`` is not set."""
    start = time.perf_counter()
    model_dir, out = Path(opts.model_dir), Path(opts.out_dir).absolute()
    cfg = read_config(model_dir)
    adapter = adapter_for(cfg, WeightStore(model_dir))
    for value in (opts.head_quant, opts.draft_head_quant):
        if value not in fused_head.HEAD_QUANT:
            raise ConfigError(f"unknown head quantization '{value}'; use one of {', '.join(fused_head.HEAD_QUANT)}")
    bits_of(opts.expert_quant)                   # a ConfigError for an unknown name
    graphs = graph_variant(opts.graphs, adapter)
    if graphs is not Graphs.FUSED and opts.head_quant != "none":
        raise ConfigError("an 8-bit head needs fused graphs (MatMulNBits is an ONNX Runtime operator); "
                          "export with --graphs fused or without --head-quant")
    if opts.draft_dir is not None:
        read_config(Path(opts.draft_dir))          # fail early on a missing draft directory
    check_target(out, opts.force)
    remove_stale_partials(out)
    with DeferredInterrupt() as interrupt:
        return _export(opts, adapter, graphs, model_dir, out, progress, interrupt, start)


def _export(opts: ExportOptions, adapter, graphs: Graphs, model_dir: Path, out: Path, progress: Optional[Progress],
            interrupt: DeferredInterrupt, start: float) -> ExportResult:
    spec = adapter.spec
    tmp = make_temp_dir(out)
    try:
        writer = PieceWriter(tmp, adapter, progress, interrupt.check, head_quant=opts.head_quant,
                             expert_quant=opts.expert_quant)
        io, experts = writer.write_all(graphs)
        tokenizer, template, tokenizer_files = copy_tokenizer(model_dir, tmp)
        writer.files.update(tokenizer_files)
        draft = None
        if opts.draft_dir is not None:
            if progress:
                progress("draft", 0, 1)
            interrupt.check()
            draft, draft_files = export_draft(Path(opts.draft_dir), tmp, model_dir, spec.dims.vocab_size,
                                              fused=graphs is Graphs.FUSED, head_quant=opts.draft_head_quant)
            writer.files.update(draft_files)
            if progress:
                progress("draft", 1, 1)
        manifest = Manifest(
            family=spec.family, source_model_type=spec.model_type, dims=spec.dims, routing=spec.routing,
            layer_kinds=spec.layer_kinds, dtype=DType.FLOAT32, opset=OPSET, io=io, files=dict(writer.files),
            experts=experts, bos_token_id=spec.bos_token_id, eos_token_ids=_eos_ids(model_dir, spec.eos_token_ids),
            tokenizer=tokenizer, producer=f"spac-ort {__version__}", draft=draft, graphs=graphs,
            rope_theta=spec.attention.rope_theta, head_quant=opts.head_quant, chat_template=template,
        )
        (tmp / naming.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        model_error = 0.0
        interrupt.check()
        if opts.check_model and opts.expert_quant == "none":     # integers change the logits
            if progress:
                progress("model parity", 0, 1)
            model_error = check_model(tmp, model_dir, adapter, tolerance=fused_check.INT8_RTOL
                                      if opts.head_quant == "int8" else MODEL_RTOL)
            if progress:
                progress("model parity", 1, 1)
        open_modes(tmp)
        interrupt.check()
        install(tmp, out, opts.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, time.perf_counter() - start, writer.max_error, model_error)
