"""The happy paths of the commands."""

from __future__ import annotations

import json

from click.testing import CliRunner

from spac_ort.cli import export as export_cli
from spac_ort.cli import run as run_cli
from spac_ort.runtime import Generator


def test_inspect(demo_bundle):
    out = CliRunner().invoke(export_cli.main, ["inspect", str(demo_bundle), "--verify"])
    assert out.exit_code == 0, out.output
    assert "qwen3_moe" in out.stdout and "64 per layer, top-4" in out.stdout
    assert "all files match their sha256" in out.stdout


def test_run_streams_text_and_reports(demo_bundle):
    out = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "12"])
    assert out.exit_code == 0, out.output
    gen = Generator.from_bundle(demo_bundle)
    ids = list(gen.generate("def add(a, b):", max_new_tokens=12))
    assert out.stdout.rstrip("\n") == gen.tokenizer.decode(ids)
    assert "new tokens 12" in out.stderr and "tokens/s" in out.stderr


def test_run_json(demo_bundle):
    out = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "Der Hund", "-n", "8", "--json",
                                            "--temperature", "0.9", "--top-p", "0.95", "--seed", "3"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert len(data["generated_token_ids"]) == 8 or data["generated_token_ids"][-1] == 0
    assert data["prompt_token_ids"][0] == 0
    assert data["report"]["new_tokens"] == len(data["generated_token_ids"])
    again = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "Der Hund", "-n", "8", "--json",
                                              "--temperature", "0.9", "--top-p", "0.95", "--seed", "3"])
    assert json.loads(again.stdout)["generated_token_ids"] == data["generated_token_ids"]


def test_eos_stops_generation(demo_bundle):
    gen = Generator.from_bundle(demo_bundle)
    eos = gen.manifest.eos_token_ids[0]
    # find a prompt the model ends quickly: force by sampling until EOS appears within budget
    for seed in range(200):
        from spac_ort.runtime import SamplingConfig
        toks = list(gen.generate("x", max_new_tokens=40, sampling=SamplingConfig(temperature=1.5, seed=seed),
                                 speculative=False))
        if toks[-1] == eos:
            assert eos not in toks[:-1]
            assert gen.report.stop_reason == "eos"
            return
    raise AssertionError("no sampled run reached EOS")


def test_all_plain_expert_backends_agree(demo_bundle):
    outs = []
    for backend in ("moe", "grouped", "sessions"):
        res = CliRunner().invoke(run_cli.main, [str(demo_bundle), "-p", "def add(a, b):", "-n", "24", "--json",
                                                "--no-speculative", "--experts", backend])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        outs.append(data["generated_token_ids"])
        calls = data["report"]["piece_calls"]
        if backend != "sessions":       # one call per MoE layer and pass (the demo's layers are all MoE)
            assert calls["experts"] == calls["attention"]
        else:
            assert calls["experts"] >= 4 * calls["attention"] // 2
    assert outs[0] == outs[1] == outs[2]


def test_two_threads_give_the_same_tokens(demo_bundle):
    """--threads 2 runs every session on one shared pool of two threads (a process-wide
    setting, so it runs in a process of its own)."""
    import subprocess
    import sys

    args = [str(demo_bundle), "-p", "def add(a, b):", "-n", "16", "--json", "--no-speculative"]
    one = json.loads(CliRunner().invoke(run_cli.main, args).stdout)
    two = subprocess.run([sys.executable, "-m", "spac_ort.cli.run", *args, "--threads", "2"], capture_output=True,
                         text=True, check=True)
    assert json.loads(two.stdout)["generated_token_ids"] == one["generated_token_ids"]
