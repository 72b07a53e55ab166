"""Tiny random checkpoints of every supported family, built in-process (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from spac_ort.models import DEMO_TARGET

VOCAB = 8192   # the demo tokenizer's vocabulary, so bundles get a real tokenizer

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              bos_token_id=0, eos_token_id=0, pad_token_id=0)


def config_for(family: str, **overrides):
    from transformers import DeepseekV2Config, DeepseekV3Config, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig

    if family == "qwen3_moe":
        cfg = Qwen3MoeConfig(**COMMON, head_dim=8, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             intermediate_size=48, norm_topk_prob=True, tie_word_embeddings=True)
    elif family == "qwen2_moe":
        cfg = Qwen2MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             shared_expert_intermediate_size=24, intermediate_size=48, norm_topk_prob=False,
                             tie_word_embeddings=False)
    elif family == "mixtral":
        cfg = MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16,
                            sliding_window=None, tie_word_embeddings=False, rope_theta=1e6)
    elif family == "olmoe":
        cfg = OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, intermediate_size=16,
                          norm_topk_prob=False, clip_qkv=None, tie_word_embeddings=False)
    elif family == "deepseek_v2":
        cfg = DeepseekV2Config(**{**COMMON, "num_hidden_layers": 3}, kv_lora_rank=16, q_lora_rank=None,
                               qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8,
                               num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=2,
                               first_k_dense_replace=1, intermediate_size=48, topk_method="greedy",
                               n_group=4, topk_group=2, routed_scaling_factor=1.5, tie_word_embeddings=False)
    elif family == "deepseek_v3":
        cfg = DeepseekV3Config(**{**COMMON, "num_hidden_layers": 3}, kv_lora_rank=16, q_lora_rank=24,
                               qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8,
                               num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                               first_k_dense_replace=1, intermediate_size=48, n_group=4, topk_group=2,
                               routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build(family: str, path: Path, seed: int = 0, fused: bool = False, **overrides) -> Path:
    """Save a random model of ``family`` to ``path`` (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(family, **overrides), dtype=torch.float32)
    with torch.no_grad():   # larger weights than the init default: routing and logits that matter
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.2)
        for name, buf in model.named_buffers():   # DeepSeek-V3 score-correction bias
            if "e_score_correction_bias" in name:
                buf.normal_(0.0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    shutil.copyfile(DEMO_TARGET / "tokenizer.json", path / "tokenizer.json")
    if fused:
        fuse_experts(path)
    return path


def fuse_experts(path: Path) -> None:
    """Rewrite a one-tensor-per-expert checkpoint in the fused layout of newer transformers:
    ``mlp.experts.gate_up_proj [E, 2I, H]`` and ``mlp.experts.down_proj [E, H, I]``."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((path / "config.json").read_text())
    n_exp = cfg.get("num_experts") or cfg["num_local_experts"]
    state = load_file(str(path / "model.safetensors"))
    out = {k: v for k, v in state.items() if ".experts." not in k}
    for layer in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{layer}.mlp.experts"
        gate_up = [torch.cat([state[f"{pre}.{e}.gate_proj.weight"], state[f"{pre}.{e}.up_proj.weight"]])
                   for e in range(n_exp)]
        out[f"{pre}.gate_up_proj"] = torch.stack(gate_up).contiguous()
        out[f"{pre}.down_proj"] = torch.stack([state[f"{pre}.{e}.down_proj.weight"] for e in range(n_exp)]).contiguous()
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg["num_local_experts"] = n_exp           # the newer config convention as well
    cfg.pop("num_experts", None)
    cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
    (path / "config.json").write_text(json.dumps(cfg))


def hf_greedy(model_dir: Path, ids: list[int], max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return hf_generate(model, ids, max_new_tokens)


def hf_generate(model, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()
