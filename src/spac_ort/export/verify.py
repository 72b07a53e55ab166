"""Whole-model parity: the stitched bundle against the transformers reference model."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ParityError
from ..runtime.generate import Generator
from .adapters.base import Adapter

log = logging.getLogger(__name__)

MODEL_RTOL = 1e-3   # max |bundle - transformers| / max(1, max |transformers|) over the logits

_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight")
_PART = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def reference_model(model_dir: Path, adapter: Adapter) -> torch.nn.Module:
    """The transformers model of this checkpoint in fp32.

    Loaded with ``from_pretrained`` where the installed transformers reads the checkpoint
    layout (an independent reading of the weights); for layouts it cannot read (fused
    experts written by newer transformers) the weights come through the adapter.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    d = adapter.spec.dims
    config = AutoConfig.from_pretrained(model_dir)
    for key, value in (("num_experts", d.num_experts), ("num_local_experts", d.num_experts),
                       ("rope_theta", adapter.spec.attention.rope_theta)):
        if hasattr(config, key):
            setattr(config, key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, config=config, dtype=torch.float32, output_loading_info=True)
    if not info.get("missing_keys"):
        return model.eval()
    log.info("transformers cannot read this checkpoint layout directly; loading through the adapter")
    state = {}
    for key in model.state_dict():
        if m := _EXPERT.fullmatch(key):
            state[key] = getattr(adapter.expert(int(m[1]), int(m[2])), _PART[m[3]])
        elif m := _ROUTER.fullmatch(key):
            state[key] = adapter.router(int(m[1]))
        elif key == "lm_head.weight":
            state[key] = adapter.lm_head()
        else:
            state[key] = adapter.w.get(key)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_model(bundle: Path, model_dir: Path, adapter: Adapter, prompt_len: int = 12, decode: int = 3,
                seed: int = 0, tolerance: float = MODEL_RTOL) -> float:
    """Prefill ``prompt_len`` generated tokens, then decode ``decode`` more one at a time
    with the KV cache; compare every position's logits with transformers on the whole
    sequence. Returns the relative error; raises `ParityError` above ``tolerance``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, adapter.spec.dims.vocab_size, prompt_len + decode).tolist()
    model = reference_model(model_dir, adapter)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()                  # [N, V]
    del model
    gen = Generator.from_bundle(bundle)
    cache = gen.backbone.new_cache()
    got = [gen.backbone.forward(ids[:prompt_len], cache, last_only=False)]
    for tok in ids[prompt_len:-1]:
        got.append(gen.backbone.forward([tok], cache))
    ours = np.concatenate(got)                                               # [N-1, V]
    err = float(np.abs(ours - ref[:-1]).max()) / max(1.0, float(np.abs(ref).max()))
    if not err <= tolerance:
        raise ParityError(f"the exported model's logits differ from transformers by {err:.2e} "
                          f"(tolerance {tolerance:.0e}); the export is not faithful, report this model")
    return err
