"""Speculative decoding on the trained models: lossless, with a working sensor."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from spac_ort.cli import export as export_cli
from spac_ort.cli import run as run_cli
from spac_ort.runtime import Generator, SamplingConfig
from spac_ort.runtime.sensor import read_trace
from tests.conftest import load_prompts, spread
from tests.tiny import build

KS = (1, 2, 4, 8)


def _check_lossless(gen: Generator, prompts: list[dict], new_tokens: int) -> None:
    for p in prompts:
        ids = gen.encode(p["prompt"])
        plain = list(gen.generate(ids, max_new_tokens=new_tokens, speculative=False))
        for k in KS:
            spec = list(gen.generate(ids, max_new_tokens=new_tokens, draft_tokens=k))
            assert spec == plain, f"{p['id']} K={k}"
            r = gen.report
            assert r.speculative and r.proposed >= r.accepted >= 0
            assert r.new_tokens == len(spec)


def test_demo_greedy_speculative_equals_plain(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    assert gen.draft is not None
    _check_lossless(gen, load_prompts()[::7], 48)          # 23 prompts, every domain


@pytest.mark.refmodel
def test_refmodel_greedy_speculative_equals_plain(ref_bundle):
    gen = Generator.from_bundle(ref_bundle)
    _check_lossless(gen, spread(load_prompts(), 1), 48)   # 8 prompts, one per domain


def test_eos_inside_a_window_stops_cleanly(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    ids = gen.encode("int main(int argc, char **argv) {")
    plain = list(gen.generate(ids, max_new_tokens=40, speculative=False))
    records = []
    gen.step_observers.append(type("Obs", (), {"on_step": lambda self, r: records.append(r)})())
    inside = 0
    for stop_at in range(3, 30):           # pretend this token is EOS
        eos = plain[stop_at]
        gen.manifest = dataclasses.replace(gen.manifest, eos_token_ids=(eos,))
        records.clear()
        out = list(gen.generate(ids, max_new_tokens=40, draft_tokens=8))
        first = plain.index(eos)
        assert out == plain[: first + 1]
        assert gen.report.stop_reason == "eos"
        last = records[-1]
        if last.emitted and last.emitted[-1] != eos:   # EOS arrived mid-window, the rest was dropped
            inside += 1
    assert inside > 0


def test_max_new_tokens_inside_a_window(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    ids = gen.encode("int main(void) {")
    plain = list(gen.generate(ids, max_new_tokens=30, speculative=False))
    for n in (1, 2, 5, 13):
        assert list(gen.generate(ids, max_new_tokens=n, draft_tokens=8)) == plain[:n]


def test_sampling_is_reproducible_and_uses_the_draft(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    cfg = SamplingConfig(temperature=0.8, top_p=0.95, seed=11)
    a = list(gen.generate("def add(a, b):", max_new_tokens=30, sampling=cfg))
    assert gen.report.proposed > 0
    b = list(gen.generate("def add(a, b):", max_new_tokens=30, sampling=cfg))
    assert a == b


def test_sensor_counts_match_router_outputs(demo_bundle, tmp_path):
    gen = Generator.from_bundle(demo_bundle)
    records = []
    gen.step_observers.append(type("Obs", (), {"on_step": lambda self, r: records.append(r)})())
    list(gen.generate("def add(a, b):", max_new_tokens=20, draft_tokens=4))
    m = gen.manifest
    assert records[0].kind == "prefill"
    for r in records:
        assert r.counts.shape == (m.dims.num_layers, m.dims.num_experts)
        for layer in m.moe_layers():
            assert r.counts[layer].sum() == r.tokens * m.dims.top_k
            assert r.topk_ids[layer].shape == (r.tokens, m.dims.top_k)
            assert np.array_equal(np.bincount(r.topk_ids[layer].ravel(), minlength=m.dims.num_experts),
                                  r.counts[layer])
        if r.kind == "verify":
            assert r.tokens == len(r.proposed) + 1 and len(r.emitted) == r.accepted + 1


def test_trace_file_replays(demo_bundle, tmp_path):
    trace = tmp_path / "trace.jsonl"
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "24", "-k", "3",
                                            "--trace", str(trace), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    recs = read_trace(trace, 64)
    emitted = [t for r in recs for t in r["emitted"]]
    assert emitted[: len(data["generated_token_ids"])] == data["generated_token_ids"]
    assert sum(r["accepted"] for r in recs) == data["report"]["accepted"]
    assert all(r["counts"].sum() == r["tokens"] * 4 * 4 for r in recs)    # 4 layers x top-4


def test_report_and_cli_options(demo_bundle):
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "16", "-k", "4"])
    assert res.exit_code == 0 and "speculative K=4" in res.stderr and "tokens per target step" in res.stderr
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "16",
                                            "--no-speculative"])
    assert res.exit_code == 0 and "speculative" not in res.stderr
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "x", "-k", "0"])
    assert res.exit_code != 0 and "draft-tokens 0" in res.stderr


def test_external_optimum_draft_directory(demo_bundle, tmp_path):
    """A portable export's draft is optimum's; it drives the fused demo bundle from outside."""
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.models import DEMO_DRAFT, DEMO_TARGET

    export_bundle(ExportOptions(DEMO_TARGET, tmp_path / "portable", graphs="portable", draft_dir=DEMO_DRAFT,
                                check_model=False))
    external = tmp_path / "optimum-draft"
    shutil.copytree(tmp_path / "portable" / "draft", external)
    gen = Generator.from_bundle(demo_bundle, draft=external)
    plain = list(gen.generate("def add(a, b):", max_new_tokens=24, speculative=False))
    assert list(gen.generate("def add(a, b):", max_new_tokens=24, draft_tokens=4)) == plain
    assert gen.report.proposed > 0


def test_export_refuses_a_draft_with_another_vocabulary(tmp_path):
    target = build("qwen3_moe", tmp_path / "target")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "draft")
    res = CliRunner().invoke(export_cli.main, [str(target), "--draft", str(tmp_path / "draft"),
                                               "-o", str(tmp_path / "bundle")])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error:") and "vocab_size" in res.stderr and "tokenizer" in res.stderr
    assert not (tmp_path / "bundle").exists()
