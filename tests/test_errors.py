"""Bad input gives one line naming the problem and the fix, and a non-zero exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from spac_ort.cli import export as export_cli
from spac_ort.cli import run as run_cli
from spac_ort.export import ExportOptions, export_bundle
from spac_ort.models import DEMO_TARGET
from tests.tiny import build


def _fails(result, *needles: str) -> str:
    assert result.exit_code not in (0, None), result.output
    err = result.stderr.strip()
    assert err.count("\n") == 0, f"expected one line, got:\n{err}"
    assert err.startswith("error:"), err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err
    return err


def export(*args):
    return CliRunner().invoke(export_cli.main, [str(a) for a in args])


def run(*args):
    return CliRunner().invoke(run_cli.main, [str(a) for a in args])


@pytest.fixture()
def bundle_copy(demo_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(demo_bundle, dst)
    return dst


# ---- spac-export ----------------------------------------------------------------------

def test_missing_model_dir(tmp_path):
    _fails(export(tmp_path / "nope", "-o", tmp_path / "b"), "does not exist")


def test_unsupported_architecture(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    _fails(export(tmp_path / "llama", "-o", tmp_path / "b"), "model_type 'llama'", "supported:")
    assert not (tmp_path / "b").exists()


def test_missing_shard(tmp_path):
    from transformers import AutoModelForCausalLM

    src = build("qwen3_moe", tmp_path / "ckpt")
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    _fails(export(tmp_path / "sharded", "-o", tmp_path / "b"), shards[1].name, "missing", "re-download")


def test_truncated_shard(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt")
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _fails(export(src, "-o", tmp_path / "b"), "truncated or corrupt", "re-download")


def test_existing_bundle_needs_force(bundle_copy):
    _fails(export("-o", bundle_copy), "already exists", "--force")


def test_refuses_to_overwrite_a_non_bundle(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("precious")
    _fails(export("-o", tmp_path / "docs", "--force"), "not a spac-ort bundle")
    assert (tmp_path / "docs" / "keep.txt").read_text() == "precious"


def test_interrupted_export_leaves_nothing(tmp_path):
    """Interrupt in-process half way through the experts."""
    def stop_half_way(stage, done, total):
        if stage == "experts" and done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_bundle(ExportOptions(DEMO_TARGET, tmp_path / "bundle"), stop_half_way)
    assert list(tmp_path.iterdir()) == []


# ---- spac-run / bundles ---------------------------------------------------------------

def test_missing_bundle(tmp_path):
    _fails(run(tmp_path / "nope", "-p", "hi"), "does not exist", "spac-export")


def test_not_a_bundle(tmp_path):
    _fails(run(tmp_path, "-p", "hi"), "spac-manifest.json", "not a spac-ort bundle")


def test_corrupt_manifest(bundle_copy):
    (bundle_copy / "spac-manifest.json").write_text("{ not json")
    _fails(run(bundle_copy, "-p", "hi"), "not valid JSON", "re-export")


@pytest.mark.parametrize("version", [1, 99])     # 1: bundles of spac-ort before graph variants
def test_wrong_manifest_version(bundle_copy, version):
    path = bundle_copy / "spac-manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = version
    path.write_text(json.dumps(data))
    _fails(run(bundle_copy, "-p", "hi"), f"schema_version {version}", "re-export")


def test_manifest_field_of_wrong_type(bundle_copy):
    path = bundle_copy / "spac-manifest.json"
    data = json.loads(path.read_text())
    data["dims"]["top_k"] = "four"
    path.write_text(json.dumps(data))
    _fails(run(bundle_copy, "-p", "hi"), "dims.top_k")


def test_missing_expert_file(bundle_copy):
    (bundle_copy / "layers/002/experts/017.onnx").unlink()
    _fails(run(bundle_copy, "-p", "hi"), "layers/002/experts/017.onnx is missing", "re-export")


def test_truncated_expert_weights(bundle_copy):
    f = bundle_copy / "layers/001/experts/003.onnx.data"
    f.write_bytes(f.read_bytes()[:100])
    _fails(run(bundle_copy, "-p", "hi"), "layers/001/experts/003.onnx.data", "truncated")


def test_sha256_mismatch_with_verify(bundle_copy):
    f = bundle_copy / "layers/003/experts/040.onnx.data"
    raw = bytearray(f.read_bytes())
    raw[200] ^= 0xFF
    f.write_bytes(bytes(raw))
    _fails(run(bundle_copy, "-p", "hi", "--verify"), "sha256", "layers/003/experts/040.onnx.data")
    _fails(export("inspect", bundle_copy, "--verify"), "sha256")


def test_prompt_too_long(demo_bundle):
    _fails(run(demo_bundle, "-p", "word " * 3000), "at most 2048 positions", "shorten")


def test_empty_prompt(demo_bundle, tmp_path):
    _fails(run(demo_bundle, "-p", ""), "prompt is empty")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _fails(run(demo_bundle, "--prompt-file", empty), "prompt is empty")


def test_no_prompt(demo_bundle):
    _fails(run(demo_bundle), "no prompt given")


@pytest.mark.parametrize("opt", [["--temperature", "-1"], ["--top-p", "0"], ["--top-k", "-3"],
                                 ["--max-new-tokens", "0"]])
def test_bad_sampling_options(demo_bundle, opt):
    _fails(run(demo_bundle, "-p", "hi", *opt))


def test_graph_variant_the_model_cannot_have(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt")                      # head size 8: no fused attention
    _fails(export(str(src), "-o", str(tmp_path / "b"), "--graphs", "fused"), "multiple of 16", "--graphs portable")
    assert not (tmp_path / "b").exists()


def test_int8_head_needs_fused_graphs(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt")
    _fails(export(str(src), "-o", str(tmp_path / "b"), "--graphs", "portable", "--head-quant", "int8"),
           "needs fused graphs")
    assert not (tmp_path / "b").exists()
