"""Graph variants at export: fused graphs where the model allows them, portable ones
otherwise, the 8-bit head, and the errors for combinations that cannot work."""

from __future__ import annotations

import onnx
import pytest

from spac_ort.errors import ConfigError, UnsupportedModelError
from spac_ort.export import ExportOptions, export_bundle
from spac_ort.export.fused_check import INT8_RTOL
from spac_ort.manifest import load_manifest
from spac_ort.runtime import Generator
from tests.tiny import build

FUSABLE = {"hidden_size": 64, "head_dim": 16}


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_auto_picks_fused_graphs_when_the_model_allows(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt", **FUSABLE)
    export_bundle(ExportOptions(src, tmp_path / "b", check_model=False))
    m = load_manifest(tmp_path / "b")
    assert m.graphs.value == "fused" and m.head_quant == "none"
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "TopK"} <= _ops(tmp_path / "b/layers/000/layer.onnx")
    assert not (tmp_path / "b/layers/000/attention.onnx").exists()


def test_int8_head_is_quantized_and_close(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt", **FUSABLE)
    result = export_bundle(ExportOptions(src, tmp_path / "b", head_quant="int8"))
    assert 0 < result.model_error < INT8_RTOL           # quantized, and checked against transformers
    assert load_manifest(tmp_path / "b").head_quant == "int8"
    assert "MatMulNBits" in _ops(tmp_path / "b/final.onnx")
    tokens = list(Generator.from_bundle(tmp_path / "b").generate([0, 5, 9], max_new_tokens=8))
    assert len(tokens) == 8


def test_fused_graphs_need_head_sizes_of_16(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt")          # head size 8
    with pytest.raises(UnsupportedModelError, match="--graphs portable"):
        export_bundle(ExportOptions(src, tmp_path / "b", graphs="fused"))
    assert not (tmp_path / "b").exists()


def test_latent_attention_has_no_fused_graphs(tmp_path):
    src = build("deepseek_v2", tmp_path / "ckpt")
    with pytest.raises(UnsupportedModelError, match="latent attention"):
        export_bundle(ExportOptions(src, tmp_path / "b", graphs="fused"))


def test_int8_head_needs_fused_graphs(tmp_path):
    src = build("qwen3_moe", tmp_path / "ckpt", **FUSABLE)
    with pytest.raises(ConfigError, match="needs fused graphs"):
        export_bundle(ExportOptions(src, tmp_path / "b", graphs="portable", head_quant="int8"))
