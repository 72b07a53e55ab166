"""spac-bench: the grid, the summary's speedups, and the command on the demo bundle."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spac_ort.bench.grid import ALL, Cell, RunResult, grid, summarise
from spac_ort.cli import bench as bench_cli
from spac_ort.errors import ConfigError


def test_grid_runs_each_policy_once_per_what_it_varies():
    cells = grid(["none", "lru", "spac", "resident"], ["10%", "30%"], [2, "auto"])
    labels = [c.label for c in cells]
    assert labels == ["none - K=2", "none - K=auto", "lru 10% K=-", "lru 30% K=-", "spac 10% K=2",
                      "spac 10% K=auto", "spac 30% K=2", "spac 30% K=auto", "resident - K=2", "resident - K=auto"]
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        grid(["fastest"], ["17%"], [4])
    cells = grid(["cpu", "lru", "spac"], ["10%"], [2], ["fp16", "int4"])   # precision: an axis of slot policies
    assert [c.label for c in cells] == ["cpu 10% K=-", "lru 10% fp16 K=-", "lru 10% int4 K=-", "spac 10% fp16 K=2",
                                        "spac 10% int4 K=2"]


def _run(cell, domain, tokens_per_s, hit=None):
    return RunResult(cell, domain, new_tokens=11, decode_s=10 / tokens_per_s, accepted_per_window=1.0, hit_rate=hit)


def test_speedups_compare_cells_of_the_same_budget_and_k():
    spac4, spac2 = Cell("spac", "17%", 4), Cell("spac", "17%", 2)
    sd4, lru, none4 = Cell("sd-static", "17%", 4), Cell("lru", "17%", None), Cell("none", None, 4)
    results = [_run(spac4, "code", 200, 0.5), _run(spac4, "prose", 100, 0.3), _run(spac2, "code", 90),
               _run(sd4, "code", 100), _run(sd4, "prose", 100), _run(lru, "code", 50), _run(lru, "prose", 50),
               _run(none4, "code", 400), _run(none4, "prose", 400)]
    rows = summarise(results)
    row = {(r["policy"], r["k"], r["domain"]): r for r in rows}
    assert row[("spac", 4, "code")]["speedup"] == pytest.approx({"sd-static": 2.0, "lru": 4.0, "none": 0.5})
    assert "sd-static" not in row[("spac", 2, "code")]["speedup"]          # no sd-static at K=2
    both = row[("spac", 4, ALL)]
    assert both["tokens_per_s"] == pytest.approx(20 / (10 / 200 + 10 / 100))     # tokens over seconds, not a mean
    assert both["hit_rate"] == pytest.approx(0.4)
    assert both["speedup"]["sd-static"] == pytest.approx(both["tokens_per_s"] / 100)


def test_speedups_compare_cells_of_the_same_precision():
    spac8, spac4 = Cell("spac", "17%", 2, "int8"), Cell("spac", "17%", 2, "int4")
    lru8, lru4, cpu = Cell("lru", "17%", None, "int8"), Cell("lru", "17%", None, "int4"), Cell("cpu", "17%", None)
    rows = summarise([_run(spac8, "code", 300), _run(spac4, "code", 360), _run(lru8, "code", 200),
                      _run(lru4, "code", 300), _run(cpu, "code", 100)])
    row = {(r["policy"], r["fast_quant"], r["domain"]): r for r in rows}
    assert row[("spac", "int8", ALL)]["speedup"] == pytest.approx({"lru": 1.5, "cpu": 3.0})
    assert row[("spac", "int4", ALL)]["speedup"] == pytest.approx({"lru": 1.2, "cpu": 3.6})   # cpu: no slots
    from spac_ort.bench.grid import render
    assert "slots" in render(rows).splitlines()[0]                    # a precision column where they vary


def test_the_command_on_the_demo_bundle(demo_bundle, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"prompt": "def add(a, b):", "domain": "code"}, {"prompt": "def sub(a, b):", "domain": "code"},
        {"prompt": "The river", "domain": "prose"}]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "none,sd-static,spac,lru",
                                              "--budgets", "25%", "-k", "0,2", "-n", "8", "--prompts", str(prompts),
                                              "--per-domain", "1", "-o", str(out), "-q", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "| spac " in res.stdout and "x sd-static" in res.stdout and "tokens/s per domain" in res.stdout
    data = json.loads((out / "bench.json").read_text())
    assert data["prompts"] == 2                                  # one per domain
    cells = {(r["policy"], r["k"]) for r in data["rows"]}
    assert cells == {("none", 0), ("none", 2), ("sd-static", 2), ("spac", 2), ("lru", None)}   # no plain spac
    assert len(data["runs"]) == 5 * 2
    assert all(r["new_tokens"] == 8 for r in data["runs"])
    spac = next(r for r in data["rows"] if r["policy"] == "spac" and r["k"] == 2 and r["domain"] == ALL)
    assert spac["hit_rate"] is not None and spac["layer_ms_per_token"]
    assert spac["speedup"]["sd-static"] > 0 and spac["speedup"]["none"] > 0


def test_interleaved_cells_rotate_through_each_prompt(demo_bundle, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "none,cpu,spac", "--budgets", "25%",
                                              "-k", "2", "-n", "6", "-o", str(out), "-q", "--no-plots",
                                              "--interleave", "--per-domain", "1"])
    assert res.exit_code == 0, res.output
    runs = json.loads((out / "bench.json").read_text())["runs"]
    order = [r["cell"]["policy"] for r in runs]
    assert order[:3] == ["none", "cpu", "spac"] and order[3:6] == ["cpu", "spac", "none"]     # rotated
    assert len(runs) == 3 * 8 and all(r["new_tokens"] == 6 for r in runs)


def test_several_slot_precisions_in_one_run(demo_bundle, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "cpu,lru", "--budgets", "25%",
                                              "--fast-quant", "fp32,int8", "-n", "6", "-o", str(out), "-q",
                                              "--no-plots", "--per-domain", "1", "--calibrate"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "bench.json").read_text())
    cells = {(r["policy"], r["fast_quant"]) for r in data["rows"]}
    assert cells == {("cpu", None), ("lru", "fp32"), ("lru", "int8")}
    assert set(data["profile"]) == {"fp32", "int8"}                      # calibrated once per precision
    lru8 = next(r for r in data["rows"] if r["fast_quant"] == "int8" and r["domain"] == ALL)
    lru32 = next(r for r in data["rows"] if r["fast_quant"] == "fp32" and r["domain"] == ALL)
    assert lru8["hit_rate"] > lru32["hit_rate"]        # the same bytes hold more int8 experts
    assert "lru 25% int8 K=-" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["-k", "two"], "draft tokens 'two' is neither"),
    (["--fast-quant", "fp16,int3"], "unknown fast-tier precision 'int3'"),
    (["--prompts", "missing.jsonl"], "cannot read prompts file"),
    (["--policies", "fastest"], "unknown policy 'fastest'"),
])
def test_bad_options_are_one_line(demo_bundle, tmp_path, args, message):
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and message in res.output


def test_measure_a_system_profile_then_predict_from_a_trace(demo_bundle, tmp_path):
    from spac_ort.cli import run as run_cli

    trace = tmp_path / "trace.jsonl"
    res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "24", "-k", "4",
                                            "--trace", str(trace), "-q"])
    assert res.exit_code == 0, res.output
    system = tmp_path / "system.json"
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "cpu,spac", "--trace", str(trace),
                                              "--measure-system", str(system), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(system.read_text())
    assert set(data["engine_layer_s"]) == {"cpu", "spac"} and data["target_fixed_s"] > 0
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "cpu,spac", "--budgets", "10%,30%",
                                              "--trace", str(trace), "--simulate", str(system), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "PREDICTED" in res.stdout
    rows = json.loads((tmp_path / "simulated.json").read_text())["rows"]
    spac = {r["budget"]: r for r in rows if r["policy"] == "spac"}
    assert spac["30%"]["hit_rate"] > spac["10%"]["hit_rate"] and all(r["tokens_per_s"] > 0 for r in rows)
    res = CliRunner().invoke(bench_cli.main, [str(demo_bundle), "--policies", "lru", "--trace", str(trace),
                                              "--simulate", str(system), "-o", str(tmp_path)])
    assert res.exit_code == 2 and "no engine cost for policy 'lru'" in res.output


def test_each_cell_takes_the_profile_of_the_precision_it_runs_at(monkeypatch):
    from contextlib import nullcontext

    from spac_ort.bench import runner
    from spac_ort.bench.grid import Prompt

    seen = {}

    def generator(bundle, cell, fast_provider, threads, profile, *rest):  # type: ignore[no-untyped-def]
        seen[cell] = profile
        return nullcontext()

    monkeypatch.setattr(runner, "_generator", generator)
    monkeypatch.setattr(runner, "_one", lambda gen, cell, prompt, tape: RunResult(cell, prompt.domain, 2, 1.0, 0.0))
    cells = grid(["cpu", "lru"], ["10%"], [2], ["fp16", "int4"])
    profiles = {"fp16": "profile-fp16", "int4": "profile-int4"}
    runner.run_grid("bundle", cells, [(Prompt("x", None, "d", 2), None)], profile=profiles,
                    expert_quant=(None, "fp16"))
    assert {c.label: p for c, p in seen.items()} == {"cpu 10% K=-": "profile-fp16", "lru 10% fp16 K=-": "profile-fp16",
                                                     "lru 10% int4 K=-": "profile-int4"}
