"""Synthetic checkpoints: random weights with a real model's dimensions.

A model of real size makes transfers and CPU work cost what they cost, where the small
reference model makes them unrealistically cheap; random weights make it cheap to build
anywhere (from a seed, with no download). What random weights cannot give, routing with
locality and drafts that get accepted, comes from a replay tape recorded on a trained
model (`runtime/replay.py`).

    target_dir, draft_dir = write_checkpoints("qwen3-30b-a3b", root, layers=2)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import ConfigError

# Qwen3-30B-A3B and its usual draft, Qwen3-0.6B (their config.json), and a small model
# of the same family for tests
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "qwen3-30b-a3b": {
        "target": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                       num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144,
                       vocab_size=151936, num_hidden_layers=48, rope_theta=1000000.0),
        "draft": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      intermediate_size=3072, vocab_size=151936, num_hidden_layers=28, rope_theta=1000000.0),
    },
    "tiny": {
        "target": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=128,
                       num_experts_per_tok=8, moe_intermediate_size=32, intermediate_size=128, vocab_size=8192,
                       num_hidden_layers=2, rope_theta=10000.0),
        "draft": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      intermediate_size=128, vocab_size=8192, num_hidden_layers=1, rope_theta=10000.0),
    },
}
_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=4096, attention_bias=False,
               attention_dropout=0.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, use_cache=True,
               initializer_range=0.02)
_STD = 0.02


def _config(shape: dict[str, Any], layers: int, moe: bool) -> dict[str, Any]:
    cfg = {**_COMMON, **shape, "num_hidden_layers": layers}
    if moe:
        cfg.update(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", decoder_sparse_step=1,
                   mlp_only_layers=[], norm_topk_prob=True, output_router_logits=False, router_aux_loss_coef=0.0)
    else:
        cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", layer_types=["full_attention"] * layers,
                   max_window_layers=layers)
    return cfg


def _layer(cfg: dict[str, Any], i: int, gen: torch.Generator, moe: bool) -> dict[str, torch.Tensor]:
    h, d = cfg["hidden_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * _STD).to(torch.bfloat16)

    p = f"model.layers.{i}."
    w = {p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
         p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
         p + "self_attn.q_proj.weight": rand(q, h), p + "self_attn.k_proj.weight": rand(kv, h),
         p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, q),
         p + "self_attn.q_norm.weight": torch.ones(d, dtype=torch.bfloat16),
         p + "self_attn.k_norm.weight": torch.ones(d, dtype=torch.bfloat16)}
    if not moe:
        m = cfg["intermediate_size"]
        w.update({p + "mlp.gate_proj.weight": rand(m, h), p + "mlp.up_proj.weight": rand(m, h),
                  p + "mlp.down_proj.weight": rand(h, m)})
        return w
    m = cfg["moe_intermediate_size"]
    w[p + "mlp.gate.weight"] = rand(cfg["num_experts"], h)
    for e in range(cfg["num_experts"]):
        x = f"{p}mlp.experts.{e}."
        w.update({x + "gate_proj.weight": rand(m, h), x + "up_proj.weight": rand(m, h), x + "down_proj.weight": rand(h, m)})
    return w


def _write(out: Path, cfg: dict[str, Any], seed: int, moe: bool) -> None:
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    gen = torch.Generator().manual_seed(seed)
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    index: dict[str, str] = {}
    shards = [{"model.embed_tokens.weight": (torch.randn(v, h, generator=gen) * _STD).to(torch.bfloat16),
               "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
               "lm_head.weight": (torch.randn(v, h, generator=gen) * _STD).to(torch.bfloat16)}]
    shards += [_layer(cfg, i, gen, moe) for i in range(cfg["num_hidden_layers"])]
    for n, shard in enumerate(shards):                     # one shard per layer: memory stays one layer's
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        index.update({k: name for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}),
                                                      encoding="utf-8")


def write_checkpoints(name: str, root: Path, layers: int, draft_layers: int | None = None,
                      seed: int = 0) -> tuple[Path, Path]:
    """Write a random target (``layers`` MoE layers) and a random dense draft with the
    dimensions of SHAPES[name] as Hugging Face checkpoints under ``root``."""
    if name not in SHAPES:
        raise ConfigError(f"unknown synthetic model '{name}'; use one of {', '.join(SHAPES)}")
    if layers < 1 or (draft_layers is not None and draft_layers < 1):
        raise ConfigError(f"--layers {layers} and --draft-layers {draft_layers} must be at least 1")
    shape = SHAPES[name]
    target, draft = root / "target", root / "draft"
    _write(target, _config(shape["target"], layers, True), seed, True)
    _write(draft, _config(shape["draft"], draft_layers or default_draft_layers(name, layers), False), seed + 1, False)
    return target, draft


def default_draft_layers(name: str, layers: int) -> int:
    """The draft's layers in proportion to the target's, as in the real pair (Qwen3-0.6B's
    28 to Qwen3-30B-A3B's 48: 1 draft layer for 2 target layers), at least 1: a replay
    then weighs a draft token against a target pass as the real pair would. A whole draft
    beside a 2-layer target would cost far more than speculation costs at full depth."""
    shape = SHAPES[name]
    return max(1, round(layers * shape["draft"]["num_hidden_layers"] / shape["target"]["num_hidden_layers"]))


def export_synthetic(name: str, out: Path, layers: int, draft_layers: int | None = None, seed: int = 0,
                     progress: Any = None, **options: Any) -> Any:
    """Write the synthetic checkpoints beside ``out`` (removed afterwards) and export them,
    the draft included; pieces are checked against their torch modules, the whole model is
    not (there is nothing trained to compare with). Returns the `ExportResult`."""
    import shutil

    from .install import make_temp_dir
    from .pipeline import ExportOptions, export_bundle

    out = Path(out).absolute()
    if not out.parent.is_dir():
        raise ConfigError(f"directory {out.parent} does not exist; create it or choose another -o")
    if name not in SHAPES:
        raise ConfigError(f"unknown synthetic model '{name}'; use one of {', '.join(SHAPES)}")
    root = make_temp_dir(out)                  # a killed run's is removed by the next export here
    try:
        if progress:
            progress("synthetic weights", 0, 1)
        target, draft = write_checkpoints(name, root / "checkpoints", layers, draft_layers, seed)
        if progress:
            progress("synthetic weights", 1, 1)
        return export_bundle(ExportOptions(target, out, draft_dir=draft, check_model=False, **options), progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
