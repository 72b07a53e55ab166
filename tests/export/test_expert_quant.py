"""``spac-export --expert-quant int8|int4``: experts stored as integers. The bundle is
smaller, each expert graph computes what it stores, and decoding gives exactly the tokens
of the fp32 bundle quantized when it loads (the same integers)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from spac_ort.cli import export as export_cli
from spac_ort.errors import ConfigError, ManifestError
from spac_ort.export import ExportOptions, export_bundle, quant_expert
from spac_ort.manifest import load_manifest
from spac_ort.manifest_checks import expert_nbytes
from spac_ort.models import DEMO_DRAFT, DEMO_TARGET
from spac_ort.runtime import Generator
from spac_ort.runtime.config import TierConfig
from spac_ort.runtime.tiers.pools import interleaved
from spac_ort.runtime.tiers.quant import ExpertLayout

PROMPTS = ("def add(a, b):", "Der Hund", "int main(void) {")


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / request.param
    export_bundle(ExportOptions(DEMO_TARGET, out, draft_dir=DEMO_DRAFT, expert_quant=request.param))
    return request.param, out


def _tokens(bundle, **kw):
    with Generator.from_bundle(bundle, **kw) as gen:
        return [list(gen.generate(p, max_new_tokens=20, stop_at_eos=False, draft_tokens=3)) for p in PROMPTS], gen


def test_integer_experts_are_smaller_and_decode_like_load_time_quantization(demo_bundle, quantized):
    precision, bundle = quantized
    m, base = load_manifest(bundle), load_manifest(demo_bundle)
    d = m.dims
    assert m.experts.precision == precision and base.experts.precision == "fp32"
    assert m.expert_bytes() == ExpertLayout(d.hidden_size, d.expert_intermediate, int(precision[3:])).nbytes
    assert m.experts.data_size < base.experts.data_size * (0.3 if precision == "int8" else 0.16)
    got, gen = _tokens(bundle)
    assert gen.report.tiers["experts"] == precision                  # run on the QMoE lane
    want, _ = _tokens(demo_bundle, tiers=TierConfig(policy="cpu", expert_quant=precision))
    assert got == want
    with pytest.raises(ConfigError, match="stores its experts as"):
        Generator.from_bundle(bundle, tiers=TierConfig(policy="cpu", expert_quant="int8" if precision == "int4"
                                                       else "int4"))
    with pytest.raises(ConfigError, match="MoE backend only"):
        Generator.from_bundle(bundle, experts="sessions")
    with pytest.raises(ConfigError, match="drop --fast-quant"):
        Generator.from_bundle(bundle, tiers=TierConfig(policy="cpu", fast_quant="fp32"))


def test_an_integer_expert_graph_computes_what_it_stores():
    rng = np.random.default_rng(1)
    hidden, inter = 16, 6
    w_gate, w_up = (rng.standard_normal((hidden, inter)).astype(np.float32) for _ in range(2))
    w_down = rng.standard_normal((inter, hidden)).astype(np.float32)
    for bits in (8, 4):
        layout = ExpertLayout(hidden, inter, bits)
        arrays = layout.encode(*interleaved(w_gate, w_up, w_down))
        model = quant_expert.template(hidden, inter, bits).proto
        for init, arr in zip(model.graph.initializer, arrays):
            init.raw_data = np.ascontiguousarray(arr).tobytes()
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((1, 3, hidden)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, quant_expert.reference(x, arrays, bits), rtol=1e-5, atol=1e-5)
        fp32 = (x @ w_gate / (1 + np.exp(-(x @ w_gate)))) * (x @ w_up) @ w_down
        err = np.abs(got - fp32).max() / np.abs(fp32).max()
        assert 0 < err < (0.02 if bits == 8 else 0.3)                     # close to fp32, not equal


def test_expert_bytes_follow_the_layout():
    for bits, name in ((None, "fp32"), (8, "int8"), (4, "int4")):
        assert expert_nbytes(2048, 768, name) == ExpertLayout(2048, 768, bits).nbytes


def test_a_bad_precision_is_a_manifest_error(quantized, tmp_path):
    import shutil

    _, bundle = quantized
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    path = bad / "spac-manifest.json"
    data = json.loads(path.read_text())
    data["experts"]["precision"] = "int3"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="experts.precision"):
        load_manifest(bad)


def test_cli_expert_quant(tmp_path):
    res = CliRunner().invoke(export_cli.main, ["-o", str(tmp_path / "b"), "--expert-quant", "int4"])
    assert res.exit_code == 0, res.output
    assert "int4 experts" in res.stderr and "not checked (quantized experts)" in res.stderr
    res = CliRunner().invoke(export_cli.main, ["--synthetic", "tiny", "-o", str(tmp_path / "s"), "--expert-quant",
                                               "int8", "-q"])
    assert res.exit_code == 2 and "writes fp32 experts" in res.stderr


def test_each_tier_has_its_precision(demo_bundle):
    """--fast-quant apart from --expert-quant: with every expert in the slots (resident) the
    slots' precision alone decides the tokens, with none (cpu) the CPU lane's alone."""
    prompt = ["def add(a, b):"]

    def run(**tiers):
        with Generator.from_bundle(demo_bundle, tiers=TierConfig(**tiers) if tiers else None) as gen:
            return [list(gen.generate(p, max_new_tokens=24, stop_at_eos=False)) for p in prompt], gen.report.tiers

    fp32, _ = run()
    slots_fp32, t = run(policy="resident", expert_quant="int4", fast_quant="fp32")
    assert slots_fp32 == fp32 and (t["experts"], t["fast_experts"]) == ("int4", "fp32")
    int8, _ = run(policy="cpu", expert_quant="int8")
    lane_int8, t = run(policy="cpu", expert_quant="int8", fast_quant="fp32", fast_budget="10%")
    assert lane_int8 == int8 and t["fast_slots"] > 0
    int4_slots, t = run(policy="resident", expert_quant="int8", fast_quant="int4")
    assert int4_slots == run(policy="resident", expert_quant="int4")[0]
    # fp16 slots beside an fp32 CPU lane: every fetch copies an fp16 expert (from the host mirror)
    _, t = run(policy="lru", fast_quant="fp16", fast_budget="10%")
    d = load_manifest(demo_bundle).dims
    fetches = t["fetches_on_demand"] + t["fetches_prefetch"]
    assert (t["experts"], t["fast_experts"]) == ("fp32", "fp16") and fetches > 0
    assert t["bytes_to_fast"] == fetches * 3 * d.hidden_size * d.expert_intermediate * 2
    with pytest.raises(ConfigError, match="fast-tier precision"):
        TierConfig(policy="cpu", fast_quant="int3")


def test_calibration_reads_integer_experts(quantized):
    from spac_ort.runtime.calibrate import calibrate

    _, bundle = quantized
    profile = calibrate(bundle, repeats=3, tokens=(1, 2))
    assert profile.link_bytes_per_s > 0 and profile.slow_fixed_s >= 0
