"""What the placement machinery costs: decode tokens/s and fast-tier hit rate of spac,
sd-static and lru at one fast budget on the reference model (CPU stand-in fast tier), in
one process (policies interleaved prompt by prompt) and with every prompt in a fresh
``spac-run`` process (as the CLI is used).

    python -m benchmarks.policy_speed --prompts 8 --new-tokens 64 --budget 17%
    python -m benchmarks.policy_speed --src /path/to/other/checkout/src --out other.json

``--src`` measures another checkout of the package (e.g. before a change) on the same
bundle: both the in-process run and the fresh processes import it from there. spac and
sd-static both speculate with K=4, so the difference is the policy's own cost. The order
of the policies rotates from prompt to prompt (a fixed order biased the ratios by a few
percent on this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, table

POLICIES = ("sd-static", "spac", "lru")
AA = "sd-static again"
K = 4

# Runs inside the measured checkout: the policies over the prompts, interleaved.
INNER = r"""
import json, sys
from spac_ort.runtime import Generator
bundle, budget, new_tokens, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
def load(policy):
    try:
        from spac_ort.runtime.config import TierConfig
        return Generator.from_bundle(bundle, tiers=TierConfig(policy=policy, fast_budget=budget))
    except ImportError:
        return Generator.from_bundle(bundle, policy=policy, fast_budget=budget)
gens = {p: load(p) for p in ("sd-static", "spac", "lru")}
rows = []
for i, text in enumerate(prompts):
    order = list(gens.items())
    for policy, gen in order[i % 3:] + order[:i % 3]:          # rotate: no policy always runs first
        spec = policy != "lru"
        list(gen.generate(text, max_new_tokens=new_tokens, stop_at_eos=False, speculative=spec,
                          **({"draft_tokens": 4} if spec else {})))
        r = gen.report
        rows.append({"policy": policy, "tps": r.tokens_per_second, "hit_rate": r.tiers["hit_rate"]})
for gen in gens.values():
    (gen.close if hasattr(gen, "close") else gen.tiered.close)()
print(json.dumps(rows))
"""


def _env(src: Optional[Path]) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def in_process(bundle: Path, budget: str, new_tokens: int, prompts: list[str], src: Optional[Path]) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", INNER, str(bundle), budget, str(new_tokens), json.dumps(prompts)],
                         capture_output=True, text=True, env=_env(src), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_processes(bundle: Path, budget: str, new_tokens: int, prompts: list[str], src: Optional[Path],
                    repeats: int = 1) -> list[dict]:
    """One ``spac-run`` per prompt, policy and repeat, in a random order per prompt (a
    fixed order biased the ratios); sd-static runs twice, the second ("sd-static again")
    as an A/A control of what this measurement resolves."""
    rows = []
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(prompts):
            pf = Path(tmp) / f"p{i}.txt"
            pf.write_text(text, encoding="utf-8")
            for rep in range(repeats):
                runs = [*POLICIES, AA]
                rng.shuffle(runs)
                for name in runs:
                    rows.append({"prompt": i, "repeat": rep, "policy": name,
                                 **_cli_run(bundle, pf, new_tokens, name, budget, src)})
    return rows


def _cli_run(bundle: Path, prompt_file: Path, new_tokens: int, name: str, budget: str, src: Optional[Path]) -> dict:
    policy = "sd-static" if name == AA else name
    args = [str(bundle), "--prompt-file", str(prompt_file), "-n", str(new_tokens), "--policy", policy,
            "--fast-budget", budget, "--json", "-q"]
    args += ["--draft-tokens", str(K)] if policy != "lru" else []
    out = subprocess.run([sys.executable, "-c", "from spac_ort.cli.run import main; main()", *args],
                         capture_output=True, text=True, env=_env(src), check=True)
    report = json.loads(out.stdout)["report"]
    return {"tps": report["tokens_per_second"], "hit_rate": report["tiers"]["hit_rate"]}


def paired(rows: list[dict], name: str) -> float:
    """Geometric mean over (prompt, repeat) of name's tokens/s over sd-static's."""
    base = {(r["prompt"], r["repeat"]): r["tps"] for r in rows if r["policy"] == "sd-static"}
    ratios = [r["tps"] / base[(r["prompt"], r["repeat"])] for r in rows if r["policy"] == name]
    return math.exp(statistics.fmean(math.log(x) for x in ratios))


def summarise(rows: list[dict]) -> dict[str, dict]:
    out = {}
    names = [*POLICIES, AA] if any(r["policy"] == AA for r in rows) else list(POLICIES)
    for name in names:
        mine = [r for r in rows if r["policy"] == name]
        out[name] = {"tokens_per_s": statistics.fmean(r["tps"] for r in mine),
                     "hit_rate": statistics.fmean(r["hit_rate"] for r in mine)}
        out[name]["vs_sd_static"] = out[name]["tokens_per_s"] / out["sd-static"]["tokens_per_s"]
        if "prompt" in mine[0]:
            out[name]["paired_vs_sd_static"] = paired(rows, name) if name != "sd-static" else 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts, spread over the domains")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--budget", default="17%")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per prompt and policy")
    ap.add_argument("--src", type=Path, help="measure the package found in this directory instead")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out", help="where bundles are exported")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "policy_speed.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle("ref", args.work, draft=True)
    everything = load_prompts()
    step = max(1, len(everything) // args.prompts)
    prompts = [p["prompt"] for p in everything[::step][: args.prompts]]
    result = {"machine": machine(), "bundle": str(bundle), "budget": args.budget, "new_tokens": args.new_tokens,
              "prompts": len(prompts), "draft_tokens": K, "src": str(args.src or "this checkout")}
    result["one process"] = summarise(in_process(bundle, args.budget, args.new_tokens, prompts, args.src))
    result["fresh processes"] = summarise(fresh_processes(bundle, args.budget, args.new_tokens, prompts, args.src,
                                                          args.repeats))
    for mode in ("one process", "fresh processes"):
        rows = [[p, f"{v['tokens_per_s']:.1f}", f"{v['vs_sd_static']:.2f}x",
                 f"{v['paired_vs_sd_static']:.2f}x" if "paired_vs_sd_static" in v else "", f"{v['hit_rate']:.1%}"]
                for p, v in result[mode].items()]
        print(f"\n{mode} ({len(prompts)} prompts x {args.new_tokens} tokens, fast budget {args.budget})")
        print(table(["policy", "decode tok/s", "vs sd-static", "paired", "hit rate"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
