"""Speculative decoding on the reference model: acceptance and throughput per domain, and
how many distinct experts a verify window touches per layer as K grows (expert reuse).

    python -m benchmarks.speculative --new-tokens 128 --sweep-per-domain 2

CPU, fp32, greedy, all experts resident. Prints tables, writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, table
from spac_ort.runtime import Generator
from spac_ort.runtime.sensor import StepRecord


class WindowStats:
    """Distinct experts per MoE layer in each verify window."""

    def __init__(self, moe_layers: list[int]):
        self.layers = moe_layers
        self.distinct: list[float] = []
        self.tokens: list[int] = []

    def on_step(self, r: StepRecord) -> None:
        if r.kind != "verify":
            return
        self.distinct.append(float(np.mean([(r.counts[layer] > 0).sum() for layer in self.layers])))
        self.tokens.append(r.tokens)


def per_domain(gen: Generator, prompts: list[dict], new_tokens: int, k: int) -> dict:
    rows = defaultdict(lambda: defaultdict(list))
    for p in prompts:
        ids = gen.encode(p["prompt"])
        plain = list(gen.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, speculative=False))
        plain_tps = gen.report.tokens_per_second
        spec = list(gen.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, draft_tokens=k))
        assert spec == plain, f"speculative output differs on {p['id']}"
        r = gen.report
        d = rows[p["domain"]]
        d["plain_tps"].append(plain_tps)
        d["spec_tps"].append(r.tokens_per_second)
        d["accepted"].append(r.accepted)
        d["verify_steps"].append(r.verify_steps)
        d["tokens_per_step"].append(r.tokens_per_target_step)
    out = {}
    for dom, d in rows.items():
        out[dom] = {
            "prompts": len(d["plain_tps"]),
            "mean_accepted": sum(d["accepted"]) / sum(d["verify_steps"]),
            "tokens_per_target_step": statistics.mean(d["tokens_per_step"]),
            "plain_tokens_per_s": statistics.median(d["plain_tps"]),
            "spec_tokens_per_s": statistics.median(d["spec_tps"]),
        }
    return out


def sweep(gen: Generator, prompts: list[dict], new_tokens: int, ks: list[int]) -> list[dict]:
    m = gen.manifest
    e, a = m.dims.num_experts, m.dims.top_k
    out = []
    for k in ks:
        stats = WindowStats(m.moe_layers())
        gen.step_observers[:] = [stats]
        accepted = steps = 0
        for p in prompts:
            list(gen.generate(p["prompt"], max_new_tokens=new_tokens, stop_at_eos=False, draft_tokens=k))
            accepted += gen.report.accepted
            steps += gen.report.verify_steps
        gen.step_observers.clear()
        t = k + 1
        out.append({
            "k": k, "window_tokens": t, "windows": len(stats.distinct),
            "distinct_experts_per_layer": statistics.mean(stats.distinct),
            "token_expert_pairs": t * a,
            "uniform_random_distinct": e * (1 - (1 - a / e) ** t),
            "reuse": t * a / statistics.mean(stats.distinct),
            "mean_accepted": accepted / steps,
        })
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [r["token_expert_pairs"] for r in rows], "k--", label="(token, expert) pairs = (K+1) x top-k")
    ax.plot(ks, [r["uniform_random_distinct"] for r in rows], "C1:", label="distinct, if routing were uniform")
    ax.plot(ks, [r["distinct_experts_per_layer"] for r in rows], "C0o-", label="distinct experts, measured")
    ax.set_xlabel("draft tokens K (verify window = K+1 tokens)")
    ax.set_ylabel("experts per layer per verify window")
    ax.set_title("Reference model (128 experts, top-8): expert reuse in a verify window", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="K for the per-domain table")
    ap.add_argument("--per-domain", type=int, default=None, help="prompts per domain (default: all 20)")
    ap.add_argument("--sweep-per-domain", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "speculative.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "expert-reuse.png")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gen = Generator.from_bundle(ensure_bundle("ref", args.work, draft=True))
    domains = per_domain(gen, load_prompts(args.per_domain), args.new_tokens, args.k)
    print(table(["domain", "prompts", f"accepted/step (K={args.k})", "tokens/target step", "plain tok/s",
                 "speculative tok/s", "ratio"],
                [[d, r["prompts"], r["mean_accepted"], r["tokens_per_target_step"], r["plain_tokens_per_s"],
                  r["spec_tokens_per_s"], r["spec_tokens_per_s"] / r["plain_tokens_per_s"]]
                 for d, r in domains.items()]))
    rows = sweep(gen, load_prompts(args.sweep_per_domain), args.new_tokens, list(range(1, 9)))
    print()
    print(table(["K", "window tokens", "pairs (T x top-k)", "distinct experts/layer", "uniform-random distinct",
                 "reuse (pairs/distinct)", "accepted/step"],
                [[r["k"], r["window_tokens"], r["token_expert_pairs"], r["distinct_experts_per_layer"],
                  r["uniform_random_distinct"], r["reuse"], r["mean_accepted"]] for r in rows]))
    plot(rows, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "new_tokens": args.new_tokens, "k": args.k,
                                    "domains": domains, "sweep": rows}, indent=1))
    print(f"\nwrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
