"""Predictions for devices we do not own: the system profile follows the roofline of its
spec, more link bandwidth never predicts fewer tokens/s, static budgets fall on whole
layers of the model, bad inputs are one-line `ConfigError`s, and predictions over a small
synthetic trace are positive and finite."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spac_ort.bench.simulate import load_records
from spac_ort.errors import ConfigError
from spac_ort.targets.hardware import HardwareSpec
from spac_ort.targets.predict import (CALLS_OUTSIDE_LAYERS, CONTEXT_TOKENS, DENSE_BYTES, HOSTS, KERNELS_PER_LAYER,
                                      Deployment, DenseShape, EngineCosts, Host, ModelShape, budget_points,
                                      deployment, memory_need, predict_cell, system_profile)

ROOT = Path(__file__).resolve().parents[2]
SPEC = HardwareSpec("test-board", fast_bytes_per_s=100e9, fast_flops=10e12, slow_bytes_per_s=20e9, slow_flops=100e9,
                    link_bytes_per_s=10e9, link_latency_s=10e-6, call_s=10e-6, memory_bytes=64 << 30, notes="")
HOST = Host(0.5, 100e9, 10e12, 100e9, 10e12, 50e9, 5e12, 10e-6, 2e9, True)
SMALL = ModelShape(hidden=64, layers=4, experts=8, top_k=2, expert_intermediate=16, heads=4, kv_heads=2, head_dim=16,
                   vocab=100, draft=DenseShape(hidden=32, layers=2, intermediate=64, heads=2, kv_heads=1, head_dim=16))
ENGINE = EngineCosts(100e-6, 200e-6, 40e-6, 10e-6, {"lru": 300e-6, "spac": 500e-6}, {"lru": 50e-6, "spac": 250e-6})


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> list:
    """A `spac-run --trace` file of 2 MoE layers of 8 experts, top-2: a prefill, then
    decode passes whose routing favours a few experts, with K=2 drafts."""
    rng = np.random.default_rng(0)
    lines = []
    for step in range(40):
        tokens = 6 if step == 0 else 3
        layers = []
        for _ in range(2):
            counts = np.bincount(rng.choice(8, size=2 * tokens, p=[.3, .2, .15, .1, .1, .05, .05, .05]), minlength=8)
            layers.append({"experts": np.flatnonzero(counts).tolist(), "counts": counts[counts > 0].tolist()})
        kind, proposed = ("prefill", []) if step == 0 else ("verify", [5, 6])
        lines.append(json.dumps({"step": step, "kind": kind, "tokens": tokens, "proposed": proposed, "accepted": 1,
                                 "emitted": [5] if step == 0 else [5, 6], "layers": layers}))
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_records(path, 8)


def test_system_profile_follows_the_roofline():
    d = Deployment(SPEC, HOST, "int8", "fp16")
    s = system_profile(d, SMALL, 2)                           # each trace layer stands for 2 of the model's
    nbytes = SMALL.expert_bytes("int8")
    assert nbytes == 3 * 64 * 16 + 4 * (2 * 16 + 64)          # int8 weights and one fp32 scale a row
    assert s.device.fast_fixed_s == pytest.approx(2 * (SPEC.call_s + nbytes / SPEC.fast_bytes_per_s))
    assert s.device.slow_fixed_s == pytest.approx(2 * (SPEC.call_s + nbytes / SPEC.slow_bytes_per_s))
    assert s.device.slow_per_token_s == pytest.approx(2 * 6 * 64 * 16 / SPEC.slow_flops)
    assert s.device.transfer(2 * nbytes) == pytest.approx(2 * (SPEC.link_latency_s + nbytes / SPEC.link_bytes_per_s))
    dense, head = 4 * SMALL.layer_params(), 100 * 64
    kv = CONTEXT_TOKENS * 4 * 2 * 2 * 16 * 2
    launches = 4 * KERNELS_PER_LAYER * 10e-6
    assert s.target_fixed_s == pytest.approx((dense * 2 + kv) / 100e9 + head * 2 / 100e9 + launches)
    assert s.target_per_token_s == pytest.approx(2 * (dense + head) / 10e12)
    dp = SMALL.draft.params(100)
    draft_kv = CONTEXT_TOKENS * 2 * 2 * 16 * 2
    assert s.draft_per_token_s == pytest.approx((dp * 2 + draft_kv) / 50e9 + 2 * dp / 5e12
                                                + 2 * KERNELS_PER_LAYER * 10e-6)
    assert (s.lane_call_s, s.engine_layer_s, s.engine_step_s) == (0.0, {}, {})
    e = system_profile(d, SMALL, 2, ENGINE)                   # the engine's work: scaled by layers and CPU speed
    assert e.target_fixed_s - s.target_fixed_s == pytest.approx((4 + CALLS_OUTSIDE_LAYERS) * 100e-6 / 0.5)
    assert e.draft_per_token_s - s.draft_per_token_s == pytest.approx(200e-6 / 0.5)
    assert e.lane_call_s == pytest.approx(2 * 40e-6 / 0.5)
    assert e.engine_layer_s["spac"] == pytest.approx(2 * 500e-6 / 0.5)
    assert e.engine_step_s["lru"] == pytest.approx(2 * 50e-6 / 0.5)


def test_the_default_shape_is_qwen3_30b_a3b_with_a_qwen3_0_6b_draft():
    shape = ModelShape()
    assert shape.total_params() == pytest.approx(30.5e9, rel=0.01)        # the model card: 30.5B, 3.3B active
    active = shape.total_params() - shape.layers * (shape.experts - shape.top_k) * 3 * 2048 * 768
    assert active == pytest.approx(3.3e9, rel=0.03)
    assert shape.draft.params(shape.vocab) == pytest.approx(0.6e9, rel=0.01)
    assert DENSE_BYTES["int8"] * 2 == DENSE_BYTES["fp16"]


def test_a_faster_link_predicts_no_fewer_tokens(trace):
    slow = Deployment(replace(SPEC, link_bytes_per_s=0.5e9), HOST)
    fast = Deployment(replace(SPEC, link_bytes_per_s=50e9), HOST)
    a = predict_cell(trace, "lru", 0.5, slow, SMALL, ENGINE)
    b = predict_cell(trace, "lru", 0.5, fast, SMALL, ENGINE)
    assert b["tokens_per_s"] > a["tokens_per_s"] and b["native_tokens_per_s"] > a["native_tokens_per_s"]
    assert a["hit_rate"] == b["hit_rate"]


def test_predictions_are_positive_finite_and_bounded_by_the_native_loop(trace):
    d = Deployment(SPEC, HOST)
    for policy in ("lru", "spac"):
        row = predict_cell(trace, policy, 0.25, d, SMALL, ENGINE)
        assert 0 < row["tokens_per_s"] < row["native_tokens_per_s"] and math.isfinite(row["native_tokens_per_s"])
        assert 0 <= row["hit_rate"] <= 1 and row["fast_share"] == 0.25 and row["fits"]
    ranked = [predict_cell(trace, "spac", share, d, SMALL, None)["hit_rate"] for share in (0.125, 0.5, 1.0)]
    assert ranked == sorted(ranked) and ranked[-1] > ranked[0]


def test_static_budgets_fall_on_whole_layers_of_the_model():
    points = budget_points("static", 0.17, ModelShape(), 8)           # 8 of 48 layers = 1 1/3 trace layers
    assert [p for p, _ in points] == [1 / 8, 2 / 8]
    assert sum(w for _, w in points) == pytest.approx(1.0)
    assert sum(p * w for p, w in points) == pytest.approx(8 / 48)
    assert budget_points("static", 0.5, ModelShape(), 8) == [(0.5, 1.0)]
    assert budget_points("lru", 0.17, ModelShape(), 8) == [(0.17, 1.0)]
    assert budget_points("resident", 0.17, ModelShape(), 8) == [(1.0, 1.0)]


def test_memory_need_decides_what_fits():
    shape = ModelShape()
    agx, phone = deployment("jetson-agx-orin-64gb", "int8"), deployment("snapdragon-8-gen-3-phone", "int4", "int8")
    fp16 = replace(agx, expert_precision="fp16")          # fast slots are copies of experts the CPU lane keeps
    assert memory_need(agx, shape, 1.0) <= agx.spec.memory_bytes < memory_need(fp16, shape, 0.5)
    assert memory_need(fp16, shape, 0.5) > memory_need(fp16, shape, 1.0)
    assert memory_need(phone, shape, 1.0) > phone.spec.memory_bytes >= memory_need(phone, shape, 0.2)
    nx = deployment("jetson-orin-nx-16gb", "int4")                    # int4 experts held in DRAM do not fit
    assert memory_need(nx, shape, 0.0, speculative=False) > nx.spec.memory_bytes
    assert not HOSTS["jetson-orin-nx-16gb-nvme"].experts_in_memory


def test_engine_costs_load_from_the_simulator_check(tmp_path):
    e = EngineCosts.load(ROOT / "docs" / "results" / "simulate_check.json", 8)
    assert e.session_call_s > 0 and {"cpu", "static", "lru", "sd-static", "spac", "resident"} <= set(e.engine_layer_s)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"system\": {}}", encoding="utf-8")
    with pytest.raises(ConfigError, match="unreadable") as err:
        EngineCosts.load(bad, 8)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make, match", [
    (lambda t: ModelShape().expert_bytes("fp8"), "unknown expert precision 'fp8'"),
    (lambda t: ModelShape(hidden=0), "'hidden' is 0"),
    (lambda t: deployment("jetson-nano"), "unknown device 'jetson-nano'"),
    (lambda t: Deployment(SPEC, HOST, dense_precision="bf16"), "unknown dense precision"),
    (lambda t: deployment("jetson-agx-orin-64gb", "int2"), "unknown expert precision 'int2'"),
    (lambda t: Deployment(SPEC, replace(HOST, cpu_speed=0.0)), "cpu_speed is 0.0"),
    (lambda t: predict_cell(t, "lru", 0.0, Deployment(SPEC, HOST), SMALL, ENGINE), "share 0.0 is outside"),
    (lambda t: predict_cell(t, "lru", 1.5, Deployment(SPEC, HOST), SMALL, ENGINE), "share 1.5 is outside"),
    (lambda t: predict_cell(t, "lru", 0.5, Deployment(SPEC, HOST), replace(SMALL, experts=16), ENGINE),
     "8 experts a layer and the model has 16"),
    (lambda t: predict_cell(t, "lru", 0.5, Deployment(SPEC, HOST), replace(SMALL, layers=1), ENGINE),
     "2 MoE layers and the model 1"),
    (lambda t: predict_cell(t, "static", 0.5, Deployment(SPEC, HOST), SMALL, ENGINE), "none for policy 'static'"),
    (lambda t: predict_cell([], "lru", 0.5, Deployment(SPEC, HOST), SMALL, ENGINE), "no records"),
])
def test_bad_inputs_are_one_line_config_errors(trace, make, match):
    with pytest.raises(ConfigError, match=match) as err:
        make(trace)
    assert "\n" not in str(err.value)
