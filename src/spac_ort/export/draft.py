"""Export the dense draft model with optimum (``text-generation-with-past``) into the
bundle, after checking that it shares the target's tokenizer; check its logits against
transformers."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import naming
from ..errors import CheckpointError, ParityError, UnsupportedModelError
from ..manifest import DraftSpec, FileEntry, sha256_file
from ..naming import Graphs
from ..runtime.draft import DraftModel, DraftShape
from ..runtime.fused_draft import FusedDraft
from .checkpoint import WeightStore, read_config
from .config import rope_theta
from .fused_check import INT8_RTOL
from .fused_draft import draft_spec, write_draft_graph

log = logging.getLogger(__name__)
DRAFT_RTOL = 1e-3


def _vocab(tokenizer_json: Path) -> tuple[dict, list]:
    try:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        return data["model"].get("vocab", {}), data.get("added_tokens", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read {tokenizer_json} ({exc}); re-download the checkpoint") from None


def check_same_tokenizer(target_dir: Path, draft_dir: Path, target_vocab: int) -> None:
    cfg = read_config(draft_dir)
    if int(cfg.get("vocab_size", -1)) != target_vocab:
        raise UnsupportedModelError(f"the draft's vocab_size {cfg.get('vocab_size')} differs from the target's "
                                    f"{target_vocab}; use a draft trained with the target's tokenizer")
    t_tok, d_tok = target_dir / "tokenizer.json", draft_dir / "tokenizer.json"
    if t_tok.is_file() and d_tok.is_file():
        t_vocab, t_added = _vocab(t_tok)
        d_vocab, d_added = _vocab(d_tok)
        if t_vocab != d_vocab or [a.get("content") for a in t_added] != [a.get("content") for a in d_added]:
            raise UnsupportedModelError("the draft's tokenizer differs from the target's; use a draft trained "
                                        "with the target's tokenizer")


def export_draft(draft_dir: Path, bundle: Path, target_dir: Path, target_vocab: int, fused: bool = False,
                 head_quant: str = "int8") -> tuple[DraftSpec, dict[str, FileEntry]]:
    """Write ``bundle/draft/`` and return its manifest entry and file entries: one fused
    graph (``fused``, where the draft is a dense decoder the builder knows; its lm_head
    8-bit unless ``head_quant`` is "none"), else optimum's export."""
    check_same_tokenizer(target_dir, draft_dir, target_vocab)
    cfg = read_config(draft_dir)
    out = bundle / naming.DRAFT_DIR
    out.mkdir()
    weights = WeightStore(draft_dir)
    spec = draft_spec(cfg, weights) if fused else None
    if spec is None:
        files = _optimum_export(draft_dir, bundle, out)
        model = DraftModel(bundle / naming.DRAFT_GRAPH)
        shape, graphs, head_quant = model.shape, Graphs.PORTABLE, "none"
    else:
        written = write_draft_graph(spec, weights, bundle / naming.DRAFT_GRAPH, head_quant)
        files = {naming.DRAFT_GRAPH: written.graph, naming.data_path(naming.DRAFT_GRAPH): written.data}
        d = spec.dims
        shape, graphs = DraftShape(d.num_layers, d.num_kv_heads, d.head_dim, d.vocab_size), Graphs.FUSED
    entry = DraftSpec(graph=naming.DRAFT_GRAPH, num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                      head_dim=shape.head_dim, vocab_size=int(cfg["vocab_size"]),
                      max_positions=int(cfg.get("max_position_embeddings", 1 << 30)),
                      model_type=str(cfg.get("model_type")), graphs=graphs, rope_theta=rope_theta(cfg),
                      head_quant=head_quant)
    if spec is not None:
        model = FusedDraft(bundle / naming.DRAFT_GRAPH, entry)
    check_draft(model, draft_dir, entry.vocab_size, tolerance=INT8_RTOL if head_quant == "int8" else DRAFT_RTOL)
    return entry, files


def _optimum_export(draft_dir: Path, bundle: Path, out: Path) -> dict[str, FileEntry]:
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    work = bundle / ".draft-export"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            main_export(str(draft_dir), output=str(work), task="text-generation-with-past", device="cpu",
                        do_validation=False, no_post_process=True, dtype="fp32")
        except (ValueError, KeyError) as exc:
            raise UnsupportedModelError(f"optimum cannot export the draft in {draft_dir} ({exc}); "
                                        "use a dense decoder model optimum supports") from None
    files: dict[str, FileEntry] = {}
    for f in sorted(work.iterdir()):
        if f.suffix in (".onnx", ".data") or f.name.endswith(".onnx_data"):
            shutil.move(str(f), out / f.name)
            rel = f"{naming.DRAFT_DIR}/{f.name}"
            files[rel] = FileEntry((out / f.name).stat().st_size, sha256_file(out / f.name))
    shutil.rmtree(work)
    if naming.DRAFT_GRAPH not in files:
        raise UnsupportedModelError(f"optimum did not write model.onnx for the draft in {draft_dir}")
    return files


def check_draft(model, draft_dir: Path, vocab: int, prompt_len: int = 10, decode: int = 3,
                tolerance: float = DRAFT_RTOL) -> float:
    """Prefill then decode with the KV cache; compare logits with transformers."""
    from transformers import AutoModelForCausalLM

    ids = np.random.default_rng(1).integers(0, vocab, prompt_len + decode).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    cache = model.new_cache()
    got = [model.forward(ids[:prompt_len], cache)]
    for tok in ids[prompt_len:]:
        got.append(model.forward([tok], cache))
    ours = np.stack(got)                                     # positions prompt_len-1 .. end
    err = float(np.abs(ours - ref[prompt_len - 1:]).max()) / max(1.0, float(np.abs(ref).max()))
    if not err <= tolerance:
        raise ParityError(f"the exported draft's logits differ from transformers by {err:.2e} "
                          f"(tolerance {tolerance:.0e}); report this draft model")
    return err
