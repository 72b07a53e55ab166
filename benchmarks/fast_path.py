"""Fast path: where a token's time goes with portable graphs (standard operators) and fused
graphs (ONNX Runtime's attention, norm and MoE operators, values prebound, KV cache in
place), the cost of a K=4 verify window against one token, the draft's cost per token, and
the 8-bit head's greedy agreement with fp32.

    python -m benchmarks.fast_path --per-domain 2 --new-tokens 64 --repeats 3

All bundles are loaded in one process and measured in rotating order, so machine noise hits
them alike; compare ratios, not absolute times. Prints tables and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, agreement, load_prompts, machine, model_dirs, table
from spac_ort.runtime import Generator

VARIANTS = {                       # name -> export options
    "portable": {"graphs": "portable"},
    "fused": {"graphs": "fused"},
    "fused + int8 head": {"graphs": "fused", "head_quant": "int8"},
}


def export(name: str, options: dict, out_root: Path) -> Path:
    from spac_ort.errors import SpacError
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.manifest import load_manifest

    bundle = out_root / ("ref-" + name.replace(" + ", "-").replace(" ", "-"))
    try:
        if load_manifest(bundle).draft is not None:
            return bundle
    except SpacError:          # none yet, or written by an older spac-ort
        pass
    target, draft = model_dirs("ref")
    export_bundle(ExportOptions(target, bundle, force=True, draft_dir=draft, **options))
    return bundle


def piece_costs(gen: Generator, prompt: list[int], steps: int) -> dict:
    """us per greedy decode token (T=1, plain), per piece kind, a K=4 window (T=5), a draft token."""
    bb, draft = gen.backbone, gen.draft
    bb.greedy = True            # as in greedy decoding: the fused fp32 head is screened
    cache = bb.new_cache()
    bb.forward(prompt, cache)
    bb.timers.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        bb.forward([5], cache)
    token = (time.perf_counter() - t0) / steps
    pieces = {k: v / steps * 1e6 for k, v in bb.timers.seconds.items()}
    t0 = time.perf_counter()
    for _ in range(steps // 4):
        bb.forward([5, 6, 7, 8, 9], cache, last_only=False)
        cache.truncate(cache.length - 5)
    window = (time.perf_counter() - t0) / (steps // 4)
    dcache = draft.new_cache()
    draft.forward(prompt, dcache)
    t0 = time.perf_counter()
    for _ in range(steps):
        draft.forward([5], dcache)
    draft_token = (time.perf_counter() - t0) / steps
    return {"token_us": token * 1e6, "window5_us": window * 1e6, "window_over_token": window / token,
            "draft_token_us": draft_token * 1e6, "draft_over_token": draft_token / token, "pieces_us": pieces}


def decode(gen: Generator, prompt: str, new_tokens: int, **kw) -> tuple[list[int], float, float]:
    tokens = list(gen.generate(prompt, max_new_tokens=new_tokens, stop_at_eos=False, **kw))
    return tokens, gen.report.tokens_per_second, gen.report.acceptance_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="decode steps per piece-cost measurement")
    ap.add_argument("--out-root", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fast_path.json")
    args = ap.parse_args()
    prompts = load_prompts(args.per_domain)
    gens = {name: Generator.from_bundle(export(name, opts, args.out_root)) for name, opts in VARIANTS.items()}
    names = list(gens)
    probe = gens["fused"].encode(prompts[0]["prompt"])
    costs: dict[str, list[dict]] = {n: [] for n in names}
    runs: list[dict] = []
    for r in range(args.repeats):
        for i, p in enumerate(prompts):
            order = names[(i + r) % len(names):] + names[:(i + r) % len(names)]
            row: dict = {"repeat": r, "id": p["id"], "domain": p["domain"]}
            for n in order:
                tokens, tps, _ = decode(gens[n], p["prompt"], args.new_tokens, speculative=False)
                row[n] = {"tokens": tokens, "plain_tps": tps}
                if n == "fused":
                    for k in (4, "auto"):
                        spec, stps, acc = decode(gens[n], p["prompt"], args.new_tokens, draft_tokens=k)
                        row[n][f"spec_{k}_tps"], row[n][f"spec_{k}_acceptance"] = stps, acc
                        row[n][f"spec_{k}_identical"] = spec == tokens
            runs.append(row)
        for n in order:
            costs[n].append(piece_costs(gens[n], probe, args.steps))
    report(names, prompts, runs, costs, args)


def med(xs) -> float:
    return statistics.median(xs)


def report(names: list[str], prompts: list[dict], runs: list[dict], costs: dict, args: argparse.Namespace) -> None:
    cost_rows = []
    for n in names:
        c = costs[n]
        pieces = {k: med([x["pieces_us"].get(k, 0.0) for x in c]) for k in c[0]["pieces_us"]}
        cost_rows.append([n, med([x["token_us"] for x in c]), med([x["window5_us"] for x in c]),
                          med([x["window_over_token"] for x in c]), med([x["draft_token_us"] for x in c]),
                          med([x["draft_over_token"] for x in c]),
                          ", ".join(f"{k} {v:.0f}" for k, v in sorted(pieces.items(), key=lambda kv: -kv[1]))])
    print(table(["graphs", "us/token", "K=4 window us", "window/token", "draft us/token", "draft/token",
                 "per token, by piece (us)"], cost_rows))
    base = "portable"
    speed_rows = []
    for n in names:
        ratio = [r[n]["plain_tps"] / r[base]["plain_tps"] for r in runs]
        same = sum(r[n]["tokens"] == r["fused"]["tokens"] for r in runs)
        prefix = statistics.mean(agreement(r[n]["tokens"], r["fused"]["tokens"]) for r in runs)
        speed_rows.append([n, med([r[n]["plain_tps"] for r in runs]), med(ratio), f"{same}/{len(runs)}", prefix])
    print()
    print(table(["graphs", "plain tok/s", f"x {base} (paired)", "same tokens as fused fp32",
                 f"mean common prefix (of {args.new_tokens})"], speed_rows))
    domains = sorted({r["domain"] for r in runs})
    dom_rows = []
    for d in domains:
        rs = [r["fused"] for r in runs if r["domain"] == d]
        dom_rows.append([d, med([x["plain_tps"] for x in rs]), med([x["spec_4_tps"] for x in rs]),
                         med([x["spec_4_tps"] / x["plain_tps"] for x in rs]), med([x["spec_4_acceptance"] for x in rs]),
                         med([x["spec_auto_tps"] / x["plain_tps"] for x in rs]),
                         all(x["spec_4_identical"] and x["spec_auto_identical"] for x in rs)])
    print()
    print(table(["domain (fused)", "plain tok/s", "K=4 tok/s", "K=4 / plain", "acceptance", "auto / plain",
                 "lossless"], dom_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "prompts": [p["id"] for p in prompts],
                                    "new_tokens": args.new_tokens, "repeats": args.repeats, "costs": costs,
                                    "runs": runs}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
