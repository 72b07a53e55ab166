"""User faults at `spac-run`: outputs that cannot be written (checked before generating),
bad option values, bad profiles, usage errors, a closed stdout, signals; and
placements that silently degraded before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import count_case, one_line_error, run

PROMPT = ["-p", "def fibonacci(n):", "-n", "8"]


@pytest.mark.parametrize("option", ["--plan-out", "--trace"])
def test_output_into_a_missing_directory_fails_before_generating(demo_bundle, tmp_path, option):
    target = tmp_path / "no-such-dir" / ("plan.json" if option == "--plan-out" else "t.jsonl")
    res = run(demo_bundle, *PROMPT, "--policy", "spac", "--fast-budget", "17%", option, target)
    one_line_error(res, option, "does not exist")
    assert res.stdout == ""                                    # nothing was generated


def test_output_that_is_a_directory(demo_bundle, tmp_path):
    one_line_error(run(demo_bundle, *PROMPT, "--trace", tmp_path), "--trace", "is a directory")


def test_calibrate_into_a_missing_directory(demo_bundle, tmp_path):
    one_line_error(run(demo_bundle, "--calibrate", tmp_path / "nope" / "p.json"), "--calibrate", "does not exist")


def test_plan_out_needs_a_policy_and_a_known_format(demo_bundle, tmp_path):
    one_line_error(run(demo_bundle, *PROMPT, "--plan-out", tmp_path / "p.json"), "needs a placement policy")
    one_line_error(run(demo_bundle, *PROMPT, "--policy", "lru", "--fast-budget", "10%", "--plan-out",
                       tmp_path / "p.txt"), ".json or .dot")


@pytest.mark.parametrize("opt,needle", [
    (["--seed", "-1"], "seed -1"),
    (["--temperature", "nan"], "not a finite number"),
    (["--temperature", "inf"], "not a finite number"),
    (["--top-p", "nan"], "top-p"),
    (["-n", "abc"], "--max-new-tokens"),
    (["--policy", "fastest"], "--policy"),
    (["--no-such-option"], "no-such-option"),
    (["--fast-provider", "tpu"], "--fast-provider"),
])
def test_bad_option_values(demo_bundle, opt, needle):
    one_line_error(run(demo_bundle, *PROMPT, *opt), needle)


def test_usage_errors_name_the_help(demo_bundle):
    err = one_line_error(run(demo_bundle, *PROMPT, "--bogus"))
    assert "--help" in err


@pytest.mark.parametrize("profile,needle", [
    ({"link_bytes_per_s": 0}, "link_bytes_per_s"),
    ({"link_bytes_per_s": "fast"}, "link_bytes_per_s"),
    ({"fast_fixed_s": -1.0}, "fast_fixed_s"),
    ({"slow_per_token_s": None}, "slow_per_token_s"),
    ({"extra_field": 1}, "extra_field"),
])
def test_bad_device_profiles(demo_bundle, tmp_path, profile, needle):
    base = {"name": "p", "fast_fixed_s": 5e-5, "fast_per_token_s": 5e-6, "slow_fixed_s": 5e-5,
            "slow_per_token_s": 5e-6, "link_latency_s": 5e-6, "link_bytes_per_s": 5e9}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**base, **profile}))
    one_line_error(run(demo_bundle, *PROMPT, "--policy", "spac", "--fast-budget", "17%", "--profile", path), needle)
    for text in ("not json", "[1, 2]"):
        path.write_text(text)
        one_line_error(run(demo_bundle, *PROMPT, "--policy", "spac", "--fast-budget", "17%", "--profile", path),
                       "device profile")


def test_bare_budget_numbers_are_refused(demo_bundle):
    one_line_error(run(demo_bundle, *PROMPT, "--policy", "lru", "--fast-budget", "17"), "no unit", "17B", "17%")
    one_line_error(run(demo_bundle, *PROMPT, "--policy", "lru", "--ram-budget", "4000000"), "no unit")


@pytest.mark.parametrize("policy", ["spac", "lru"])
def test_policies_that_need_fast_slots_refuse_zero(demo_bundle, policy):
    one_line_error(run(demo_bundle, *PROMPT, "--policy", policy, "--fast-budget", "0%"), "needs 4", "%")


@pytest.mark.parametrize("policy", ["static", "sd-static"])
def test_static_placement_that_degrades_to_the_cpu_says_so_once(demo_bundle, policy):
    res = run(demo_bundle, *PROMPT, "--policy", policy, "--fast-budget", "17%")
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    ok = res.exit_code == 0 and len(warnings) == 1 and "every expert runs on the CPU" in warnings[0]
    count_case(ok)
    assert ok, res.output
    res = run(demo_bundle, *PROMPT, "--policy", policy, "--fast-budget", "30%")
    assert res.exit_code == 0 and "warning:" not in res.stderr, res.output


def test_plan_out_of_a_plain_policy_shows_a_decode_step(demo_bundle, tmp_path):
    plan = tmp_path / "plan.json"
    res = run(demo_bundle, *PROMPT, "--policy", "lru", "--fast-budget", "10%", "--plan-out", plan)
    assert res.exit_code == 0, res.output
    data = json.loads(plan.read_text())
    prompt_routes = [n for n in data["nodes"] if n["id"].endswith(".route")]
    ok = data["step"] >= 1 and len(prompt_routes) == 4
    count_case(ok)
    assert ok, data["step"]


def _spawn(bundle: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen([sys.executable, "-m", "spac_ort.cli.run", str(bundle), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_closed_stdout_ends_quietly(demo_bundle):
    """``spac-run ... | head -c 1``: the reader goes away after the first byte."""
    proc = _spawn(demo_bundle, "-p", "def fibonacci(n):", "-n", "400", "--no-speculative")
    proc.stdout.read(1)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    ok = proc.returncode == 141 and b"Traceback" not in err and b"Error" not in err
    count_case(ok)
    assert ok, (proc.returncode, err.decode())


@pytest.mark.parametrize("sig,code,message", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated")])
def test_signal_during_run(demo_bundle, tmp_path, sig, code, message):
    trace = tmp_path / "t.jsonl"
    proc = _spawn(demo_bundle, "-p", "def fibonacci(n):", "-n", "100000", "--no-speculative", "--trace", str(trace))
    proc.stdout.read(16)                                     # generating
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    ok = proc.returncode == code and lines[-1:] == [message] and b"Traceback" not in err
    count_case(ok)
    assert ok, (proc.returncode, err.decode()[-2000:])
    records = [json.loads(x) for x in trace.read_text().splitlines()]   # the trace is whole lines
    assert records and records[0]["kind"] == "prefill"
