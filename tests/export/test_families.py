"""Every supported family, as a tiny random model: export, then greedy generation must be
token-identical to transformers in fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spac_ort.export import ExportOptions, export_bundle
from spac_ort.manifest import LayerKind, load_manifest
from spac_ort.runtime import Generator
from tests.tiny import build, hf_greedy

CASES = {
    "qwen3_moe": {},
    "qwen3_moe-fused": {"fused": True},
    "qwen3_moe-dense-layer": {"mlp_only_layers": [1]},
    "qwen2_moe": {},
    "mixtral": {},
    "mixtral-window": {"sliding_window": 7},
    "olmoe": {},
    "olmoe-clip": {"clip_qkv": 0.5},
    "deepseek_v2": {},
    "deepseek_v2-qlora-grouped": {"q_lora_rank": 24, "topk_method": "group_limited_greedy"},
    "deepseek_v3": {},
    "deepseek_v3-halves": {"rope_interleave": False, "norm_topk_prob": False},
    # fused graphs (ORT's attention needs head sizes that are multiples of 16)
    "qwen3_moe-graphs-fused": {"graphs": "fused", "hidden_size": 64, "head_dim": 16},
    "qwen3_moe-dense-layer-graphs-fused": {"graphs": "fused", "hidden_size": 64, "head_dim": 16,
                                           "mlp_only_layers": [1]},
    "qwen2_moe-graphs-fused": {"graphs": "fused", "hidden_size": 64},
    "mixtral-window-graphs-fused": {"graphs": "fused", "hidden_size": 64, "sliding_window": 7},
    "olmoe-clip-graphs-fused": {"graphs": "fused", "hidden_size": 64, "clip_qkv": 0.5},
}


@pytest.mark.parametrize("case", list(CASES))
def test_family_greedy_matches_transformers(case, tmp_path):
    family = case.split("-")[0]
    opts = dict(CASES[case])
    fused = opts.pop("fused", False)
    graphs = opts.pop("graphs", "auto")
    src = build(family, tmp_path / "ckpt", seed=len(case), **opts)
    ref_dir = src
    if fused:   # transformers 4.57 reads only the unfused layout: keep a copy as the reference
        ref_dir = build(family, tmp_path / "ref", seed=len(case))
        build(family, src, seed=len(case), fused=True)
        assert "gate_up_proj" in json.dumps(list(__import__("safetensors").safe_open(
            str(src / "model.safetensors"), "pt").keys()))
    result = export_bundle(ExportOptions(src, tmp_path / "bundle", graphs=graphs))
    assert result.model_error < 1e-3
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest.family.value == family
    assert manifest.graphs.value == ("fused" if graphs == "fused" else "portable")   # auto: head sizes of 8
    if "dense" in case:
        assert manifest.layer_kinds == (LayerKind.MOE, LayerKind.DENSE)
    if "grouped" in case:
        assert manifest.routing.topk_method.value == "group_limited_greedy"
    if family.startswith("deepseek"):
        assert manifest.layer_kinds == (LayerKind.DENSE, LayerKind.MOE, LayerKind.MOE)
        assert (manifest.dims.cache_heads, manifest.dims.cache_key_dim, manifest.dims.cache_value_dim) == (1, 16, 4)
    gen = Generator.from_bundle(tmp_path / "bundle")
    rng = np.random.default_rng(7)
    for n in (1, 9, 23):
        ids = [0] + rng.integers(1, 8192, n).tolist()
        ours = list(gen.generate(ids, max_new_tokens=24))
        assert ours == hf_greedy(ref_dir, ids, 24), f"{case}: prompt of {n + 1} tokens diverged"
