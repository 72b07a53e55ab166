"""What the placement machinery costs: decode tokens/s and fast-tier hit rate of spac,
sd-static and lru at one fast budget on the reference model (CPU stand-in fast tier), in
one process (policies interleaved prompt by prompt) and with every prompt in a fresh
``spac-run`` process (as the CLI is used).

    python -m benchmarks.policy_speed --prompts 8 --new-tokens 64 --budget 17%
    python -m benchmarks.policy_speed --src /path/to/other/checkout/src --out other.json

``--src`` measures another checkout of the package (e.g. before a change) on the same
bundle: both the in-process run and the fresh processes import it from there. spac and
sd-static both speculate with K=4, so the difference is the policy's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, table

POLICIES = ("sd-static", "spac", "lru")
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
for text in prompts:
    for policy, gen in gens.items():
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


def fresh_processes(bundle: Path, budget: str, new_tokens: int, prompts: list[str], src: Optional[Path]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(prompts):
            pf = Path(tmp) / f"p{i}.txt"
            pf.write_text(text, encoding="utf-8")
            for policy in POLICIES:
                args = [str(bundle), "--prompt-file", str(pf), "-n", str(new_tokens), "--policy", policy,
                        "--fast-budget", budget, "--json", "-q"]
                args += ["--draft-tokens", str(K)] if policy != "lru" else []
                out = subprocess.run([sys.executable, "-c", "from spac_ort.cli.run import main; main()", *args],
                                     capture_output=True, text=True, env=_env(src), check=True)
                report = json.loads(out.stdout)["report"]
                rows.append({"policy": policy, "tps": report["tokens_per_second"],
                             "hit_rate": report["tiers"]["hit_rate"]})
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for policy in POLICIES:
        mine = [r for r in rows if r["policy"] == policy]
        out[policy] = {"tokens_per_s": statistics.fmean(r["tps"] for r in mine),
                       "hit_rate": statistics.fmean(r["hit_rate"] for r in mine)}
    base = out["sd-static"]["tokens_per_s"]
    for policy in POLICIES:
        out[policy]["vs_sd_static"] = out[policy]["tokens_per_s"] / base
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts, spread over the domains")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--budget", default="17%")
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
    for mode, fn in (("one process", in_process), ("fresh processes", fresh_processes)):
        result[mode] = summarise(fn(bundle, args.budget, args.new_tokens, prompts, args.src))
        rows = [[p, f"{v['tokens_per_s']:.1f}", f"{v['vs_sd_static']:.2f}x", f"{v['hit_rate']:.1%}"]
                for p, v in result[mode].items()]
        print(f"\n{mode} ({len(prompts)} prompts x {args.new_tokens} tokens, fast budget {args.budget})")
        print(table(["policy", "decode tok/s", "vs sd-static", "hit rate"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
