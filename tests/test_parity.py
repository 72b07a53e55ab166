"""Greedy fp32 generation is token-identical to transformers on the trained models."""

from __future__ import annotations

import pytest
import torch

from spac_ort.models import DEMO_TARGET
from spac_ort.runtime import Generator
from tests.conftest import load_prompts, spread
from tests.tiny import hf_generate

NEW_TOKENS = 64


def _hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_tokenizer_matches_transformers(demo_bundle):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(DEMO_TARGET)
    gen = Generator.from_bundle(demo_bundle)
    for p in load_prompts()[::7]:
        assert gen.encode(p["prompt"]) == hf(p["prompt"])["input_ids"]


def test_demo_all_prompts_token_identical(demo_bundle):
    prompts = load_prompts()
    assert len(prompts) == 160
    gen = Generator.from_bundle(demo_bundle)
    model = _hf(DEMO_TARGET)
    mismatches = []
    for p in prompts:
        ids = gen.encode(p["prompt"])
        ours = list(gen.generate(ids, max_new_tokens=NEW_TOKENS))
        if ours != hf_generate(model, ids, NEW_TOKENS):
            mismatches.append(p["id"])
    assert not mismatches, f"{len(mismatches)} of 160 prompts diverged: {mismatches[:5]}"


@pytest.mark.refmodel
@pytest.mark.parametrize("graphs", ["fused", "portable"])
def test_refmodel_prompts_token_identical(ref_bundle, refmodel, graphs, tmp_path):
    prompts = spread(load_prompts(), per_domain=2)
    assert len({p["domain"] for p in prompts}) == 8 and len(prompts) == 16
    bundle = ref_bundle
    if graphs == "portable":
        from spac_ort.export import ExportOptions, export_bundle

        bundle = export_bundle(ExportOptions(refmodel / "target", tmp_path / "portable", graphs="portable",
                                             check_model=False)).bundle
    assert Generator.from_bundle(bundle).manifest.graphs.value == graphs
    gen = Generator.from_bundle(bundle)
    model = _hf(refmodel / "target")
    for p in prompts:
        ids = gen.encode(p["prompt"])
        assert list(gen.generate(ids, max_new_tokens=NEW_TOKENS)) == hf_generate(model, ids, NEW_TOKENS), p["id"]
