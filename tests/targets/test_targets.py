"""Deployment bundles: built whole or not at all, listed and checksummed, run token for
token like their base bundle (opening the ORT-format graphs), and hostile target sections
refused."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from spac_ort.bundle_files import verify_files
from spac_ort.cli import export as export_cli
from spac_ort.cli import run as run_cli
from spac_ort.errors import ConfigError, ManifestError
from spac_ort.manifest import load_manifest
from spac_ort.profile import DeviceProfile
from spac_ort.runtime import Generator
from spac_ort.targets import build as target_build
from spac_ort.targets.hardware import HARDWARE

PROMPT = "The history of"


@pytest.fixture(scope="module")
def android(demo_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "android"
    target_build.build_target("android", demo_bundle, out, draft_tokens=3)
    return out


@pytest.fixture(scope="module")
def jetson(demo_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "jetson"
    target_build.build_target("jetson", demo_bundle, out)
    return out


def _greedy(bundle, **kw):
    with Generator.from_bundle(bundle, **kw) as gen:
        return list(gen.generate(gen.encode(PROMPT), max_new_tokens=16, draft_tokens=3)), gen


def test_android_bundle_lists_every_file_and_runs_like_its_base(demo_bundle, android):
    m = load_manifest(android)
    assert m.target.name == "android" and m.target.fixed_tokens == (1, 4)
    verify_files(android, m)                                  # every target file is listed with its sha256
    for rel, ort in m.target.graphs.items():
        assert rel.endswith(".onnx") and ort.endswith(".ort") and (android / ort).is_file()
    for t in (1, 4):
        assert (android / f"target/fixed/T{t}/embed.ort").is_file()
    config = (android / "target/required_operators.config").read_text()
    assert "com.microsoft;1;" in config and "MoE" in config   # the runtime's expert graph is covered
    assert "NNAPI" in (android / "target/mobile_usability.txt").read_text()
    DeviceProfile.load(android / m.target.profile)
    base, _ = _greedy(demo_bundle)
    got, gen = _greedy(android)
    assert got == base
    assert gen.backbone.embed.path.suffix == ".ort"           # the ORT-format graphs were opened


def _prefill_logits(bundle):
    with Generator.from_bundle(bundle) as gen:
        bb = gen.backbone
        return bb.forward(gen.encode(PROMPT), bb.new_cache())


def test_jetson_graphs_are_fp16_and_close_to_fp32(demo_bundle, jetson, tmp_path):
    import onnx

    m = load_manifest(jetson)
    base = load_manifest(demo_bundle)
    sessions = sorted(rel for rel in base.files if rel.endswith(".onnx") and "/experts/" not in rel)
    assert sorted(m.target.graphs) == [rel for rel in sessions if rel != "final_greedy.onnx"]
    layer = onnx.load(str(jetson / m.target.graphs["layers/000/layer.onnx"]))
    types = {i.data_type for i in layer.graph.initializer if len(i.dims) == 2}
    assert types == {onnx.TensorProto.FLOAT16}                       # the weight matrices
    io = {v.name: v.type.tensor_type.elem_type for v in (*layer.graph.input, *layer.graph.output)}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # the KV cache, updated in place, is fp16 (no casts of the whole cache); the rest stays fp32
    assert {io[n] for n in ("past_key", "past_value", "present_key", "present_value")} == {f16}
    rest = {t for n, t in io.items() if "past" not in n and "present" not in n}
    assert f32 in rest and f16 not in rest
    draft = onnx.load(str(jetson / m.target.graphs[m.draft.graph]))
    assert {v.type.tensor_type.elem_type for v in draft.graph.input if v.name.startswith("past_key.")} == {f16}
    with Generator.from_bundle(jetson) as gen:
        assert gen.backbone.new_cache().keys[0].dtype == np.float16
    want, got = _prefill_logits(demo_bundle), _prefill_logits(jetson)
    err = float(abs(want - got).max()) / float(abs(want).max())
    assert 0 < err < 2e-2                                            # fp16: close, not equal
    fp32 = tmp_path / "jetson-fp32"
    target_build.build_target("jetson", demo_bundle, fp32, precision="fp32")
    assert load_manifest(fp32).target.graphs == {}
    assert _greedy(fp32)[0] == _greedy(demo_bundle)[0]              # same precision: the same tokens
    with pytest.raises(ConfigError, match="only jetson bundles take it"):
        target_build.build_target("android", demo_bundle, tmp_path / "a16", precision="fp16")


def test_jetson_bundle(demo_bundle, jetson):
    m = load_manifest(jetson)
    assert m.target.name == "jetson"
    verify_files(jetson, m)
    launcher = jetson / "target/spac-run.sh"
    assert launcher.stat().st_mode & stat.S_IXUSR and "spac-run" in launcher.read_text()
    assert "ExecStart=" in (jetson / "target/spac-ort.service").read_text()
    trt = json.loads((jetson / "target/providers.json").read_text())["providers"][0]
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_engine_cache_enable"] == "True"
    p = DeviceProfile.load(jetson / m.target.profile)
    assert p.fast(1) < p.slow(1)                              # the GPU reads an expert faster than the CPU
    tokens = _greedy(jetson)[0]                  # fp16 graphs: runs; tokens may depart from fp32's
    assert len(tokens) == 16


def test_the_runtime_passes_a_jetson_bundles_provider_options(jetson, tmp_path, monkeypatch):
    from spac_ort.errors import BundleError
    from spac_ort.runtime import loading, sessions

    m = load_manifest(jetson)
    options = loading.target_provider_options(jetson, m)
    assert m.target.provider_options == "target/providers.json"
    assert options["TensorrtExecutionProvider"]["trt_engine_cache_enable"] == "True"
    with sessions.provider_options(options):
        got = sessions.with_options(("TensorrtExecutionProvider", "CPUExecutionProvider"))
    assert got == [("TensorrtExecutionProvider", options["TensorrtExecutionProvider"]), "CPUExecutionProvider"]
    assert sessions.with_options(("TensorrtExecutionProvider",)) == ["TensorrtExecutionProvider"]   # outside: none
    # every graph session of a load is built with them (here: the CPU provider, whose options are empty)
    seen = []
    real = sessions.with_options
    monkeypatch.setattr(sessions, "with_options", lambda p: seen.append(sessions._OPTIONS.get()) or real(p))
    _greedy(jetson)
    assert seen and all(s == options for s in seen)
    (tmp_path / "target").mkdir()
    (tmp_path / "target/providers.json").write_text('{"providers": [["CUDAExecutionProvider", 3]]}')
    with pytest.raises(BundleError, match="not a provider options file.*spac-export target"):
        loading.target_provider_options(tmp_path, m)


def test_target_refuses_bad_input_and_leaves_nothing(demo_bundle, android, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="already a android bundle"):
        target_build.build_target("android", android, tmp_path / "again")
    with pytest.raises(ConfigError, match="unknown hardware"):
        target_build.build_target("jetson", demo_bundle, tmp_path / "x", hardware="toaster")
    with pytest.raises(ConfigError, match="at least 1"):
        target_build.build_target("android", demo_bundle, tmp_path / "x", draft_tokens=0)

    from spac_ort.targets import android as android_target

    def boom(build):
        raise RuntimeError("disk full")
    monkeypatch.setattr(android_target, "add", boom)
    with pytest.raises(RuntimeError):
        target_build.build_target("android", demo_bundle, tmp_path / "half")
    assert os.listdir(tmp_path) == []                         # no bundle, no temp dir


@pytest.mark.parametrize("edit, field", [
    (lambda t: t["graphs"].update({"embed.onnx": "../../etc/passwd"}), "target.graphs.embed.onnx"),
    (lambda t: t["graphs"].update({"embed.onnx": "target/not-listed.ort"}), "target.graphs.embed.onnx"),
    (lambda t: t.update(name="toaster"), "target.name"),
    (lambda t: t.update(fixed_tokens=[0]), "target.fixed_tokens"),
    (lambda t: t.update(profile="/abs/profile.json"), "target.profile"),
    (lambda t: t.update(provider_options="../providers.json"), "target.provider_options"),
    (lambda t: t.update(provider_options="target/unlisted.json"), "target.provider_options"),
])
def test_hostile_target_sections(android, tmp_path, edit, field):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(android, bad)
    path = bad / "spac-manifest.json"
    data = json.loads(path.read_text())
    edit(data["target"])
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"field '{field}'"):
        load_manifest(bad)


def test_cli_target_and_a_missing_provider(demo_bundle, tmp_path):
    res = CliRunner().invoke(export_cli.main, ["target", "jetson", str(demo_bundle), "-o", str(tmp_path / "j"), "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "--provider", "qnn", "-p", "hi", "-n", "2"])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "QNNExecutionProvider is not in this onnxruntime build" in res.output


def test_hardware_profiles_are_ordered():
    expert = 3 * 2048 * 768 * 4
    for hw in HARDWARE.values():
        p = hw.profile(expert, 2 * 3 * 2048 * 768)
        assert 0 < p.fast(1) < p.slow(1), hw.name
        assert p.transfer(expert) > 0


def test_android_from_a_hard_linked_bundle(demo_bundle, tmp_path):
    """A bundle copied with ``cp -al``: onnx would refuse its shared weight files."""
    import shutil

    base = tmp_path / "linked"
    shutil.copytree(demo_bundle, base, copy_function=os.link)
    target_build.build_target("android", base, tmp_path / "android", draft_tokens=1)
    assert load_manifest(tmp_path / "android").target.fixed_tokens == (1, 2)
