"""Every placement policy and budget gives the same greedy tokens as the plain runtime
(which matches transformers)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spac_ort.cli import run as run_cli
from spac_ort.runtime import Generator
from spac_ort.runtime.config import TierConfig
from spac_ort.runtime.spac.policies import SpacOptions
from spac_ort.runtime.spac.utility import UtilityConfig
from tests.conftest import load_prompts, spread

CASES = [("resident", None), ("cpu", "0%"), ("static", "30%"), ("static", "80%"), ("sd-static", "50%"),
         ("lru", "5%"), ("lru", "30%"), ("spac", "5%"), ("spac", "17%"), ("spac", "60%")]


def _outputs(gen, prompts, n):
    return [list(gen.generate(p["prompt"], max_new_tokens=n)) for p in prompts]


def test_demo_every_policy_and_budget_token_identical(demo_bundle):
    prompts = spread(load_prompts(), 1)[::2]
    plain = _outputs(Generator.from_bundle(demo_bundle), prompts, 32)
    for policy, budget in CASES:
        for mode in (("fixed", "scaled", "adaptive") if policy == "spac" else ("fixed",)):
            tiers = TierConfig(policy, budget, spac=SpacOptions(utility=UtilityConfig.for_mode(mode)))
            with Generator.from_bundle(demo_bundle, tiers=tiers) as gen:
                assert _outputs(gen, prompts, 32) == plain, f"{policy} {budget} {mode}"
                t = gen.report.tiers
                assert t["policy"] == policy and 0.0 <= t["hit_rate"] <= 1.0
                if policy == "resident":
                    assert t["hit_rate"] == 1.0
                if policy == "cpu":
                    assert t["fast_share"] == 0.0


@pytest.mark.refmodel
def test_refmodel_policies_token_identical(ref_bundle):
    prompts = spread(load_prompts(), 1)[1::3]
    plain = _outputs(Generator.from_bundle(ref_bundle), prompts, 32)
    for policy, budget in [("spac", "10%"), ("lru", "10%"), ("sd-static", "30%")]:
        tiers = TierConfig(policy, budget, spac=SpacOptions(utility=UtilityConfig.for_mode("scaled")))
        with Generator.from_bundle(ref_bundle, tiers=tiers) as gen:
            assert _outputs(gen, prompts, 32) == plain, policy


def test_cli_policy_report_trace_and_plan(demo_bundle, tmp_path):
    trace, plan_json, plan_dot = tmp_path / "t.jsonl", tmp_path / "plan.json", tmp_path / "plan.dot"
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "int main(void) {", "-n", "20", "--policy",
                                            "spac", "--fast-budget", "17%", "--trace", str(trace),
                                            "--plan-out", str(plan_json)])
    assert res.exit_code == 0, res.output
    assert "policy spac (fast tier: cpu stand-in" in res.stderr and "hit rate" in res.stderr
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert all("tiers" in rec for rec in lines)
    assert sum(rec["tiers"]["pairs"] for rec in lines) == sum(sum(sum(l["counts"]) for l in rec["layers"])
                                                             for rec in lines)
    plan = json.loads(plan_json.read_text())
    names = {n["id"] for n in plan["nodes"]}
    assert "draft" in names and "L0.route" in names and "L3.combine" in names
    assert plan["critical_path"][0] == "draft" and plan["critical_path"][-1] == "head" and plan["kind"] == "verify"
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "x", "-n", "8", "--policy", "lru",
                                            "--fast-budget", "10%", "--plan-out", str(plan_dot)])
    assert res.exit_code == 0, res.output
    assert plan_dot.read_text().startswith("digraph")


def test_policy_option_errors(demo_bundle):
    def fails(*args, needle):
        res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "x", *args])
        assert res.exit_code == 2 and res.stderr.startswith("error:") and needle in res.stderr, res.output
    fails("--policy", "resident", "--fast-budget", "10%", needle="needs 256")
    fails("--policy", "spac", "--fast-budget", "lots", needle="is not a size")
    fails("--policy", "spac", "--no-speculative", needle="needs speculative decoding")
    fails("--fast-budget", "10%", needle="need a placement policy")
    fails("--policy", "spac", "--ram-budget", "1KB", needle="--ram-budget of at least")


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3"])
def test_deepseek_every_policy_token_identical(family, tmp_path):
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.models import DEMO_DRAFT
    from tests.tiny import build

    src = build(family, tmp_path / "ckpt", topk_method="group_limited_greedy") if family == "deepseek_v2" \
        else build(family, tmp_path / "ckpt")
    export_bundle(ExportOptions(src, tmp_path / "bundle", draft_dir=DEMO_DRAFT))
    ids = [0, 17, 923, 4000, 51, 7]
    plain = list(Generator.from_bundle(tmp_path / "bundle").generate(ids, max_new_tokens=24, speculative=False))
    for policy, budget in [("resident", None), ("cpu", "0%"), ("static", "50%"), ("sd-static", "50%"),
                           ("lru", "40%"), ("spac", "20%")]:
        with Generator.from_bundle(tmp_path / "bundle", tiers=TierConfig(policy, budget)) as gen:
            assert list(gen.generate(ids, max_new_tokens=24)) == plain, policy


def test_report_tiers_cover_one_run(demo_bundle):
    with Generator.from_bundle(demo_bundle, tiers=TierConfig("lru", "10%")) as gen:
        list(gen.generate("int main(void) {", max_new_tokens=12))
        first = gen.report.tiers
        list(gen.generate("int main(void) {", max_new_tokens=12))
        second = gen.report.tiers
        pairs = gen.experts.counters.pairs
        assert 0 < first["fetches_on_demand"] and 0 < second["fetches_on_demand"]
        # the second report counts only its own run: both together make the lifetime total
        m = gen.manifest.dims
        assert gen.experts.summary(1)["fetches_on_demand"] == first["fetches_on_demand"] + second["fetches_on_demand"]
        assert pairs == 2 * (gen.report.prompt_tokens + 11) * m.num_layers * m.top_k


def test_calibrate_writes_a_usable_profile(demo_bundle, tmp_path):
    from spac_ort.profile import DeviceProfile

    out = tmp_path / "profile.json"
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "--calibrate", str(out)])
    assert res.exit_code == 0, res.output
    prof = DeviceProfile.load(out)
    assert prof.fast_fixed_s + prof.fast_per_token_s > 0 and prof.slow_fixed_s + prof.slow_per_token_s > 0
    assert prof.link_bytes_per_s > 1e6 and "stand-in" in prof.name
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "x", "-n", "6", "--policy", "spac",
                                            "--fast-budget", "10%", "--profile", str(out)])
    assert res.exit_code == 0, res.output
