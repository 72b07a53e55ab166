"""Policies on a model of real size, replaying routing and draft acceptance from tapes.

1. Tapes (once, here): the reference model's greedy runs on held-out prompts, with the
   routing of every position and the draft's agreement (`spac_ort.runtime.tape`):

    python -m benchmarks.realsize record --per-domain 2 --new-tokens 64 --out benchmarks/data/ref_tapes.jsonl.gz

2. A synthetic bundle of real size (random weights; `spac-export --synthetic`), then per
   policy one generator, every tape replayed through it (first one untimed), greedy:

    spac-export --synthetic qwen3-30b-a3b --layers 2 -o /tmp/syn
    python -m benchmarks.realsize run --bundle /tmp/syn --fast-provider cuda --fast-budget 17% \\
        --draft-tokens 4 --out docs/results/realsize_h200.json

Prints a table (tokens/s, speedups, hit rate, accepted drafts per window, MB moved to the
fast tier per token, the median prompt's prefill time, whether every replay reproduced its
tape) and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from .common import ROOT, ensure_bundle, load_prompts, machine, table

TAPES = ROOT / "benchmarks" / "data" / "ref_tapes.jsonl.gz"
POLICIES = ("none", "cpu", "static", "lru", "sd-static", "spac", "resident")
BASELINES = ("cpu", "static", "lru")


def record_cmd(args: argparse.Namespace) -> None:
    from spac_ort.runtime import Generator
    from spac_ort.runtime.tape import record, save_tapes

    bundle = ensure_bundle("ref", args.bundles, draft=True)
    prompts = load_prompts(args.per_domain)
    with Generator.from_bundle(bundle) as gen:
        tapes = [record(gen, gen.encode(p["prompt"]), args.new_tokens, p["domain"]) for p in prompts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_tapes(args.out, tapes)
    agree = statistics.mean(sum(t.agree) / len(t.agree) for t in tapes)
    print(f"wrote {len(tapes)} tapes to {args.out} (draft agreement {agree:.1%})")


def _generator(bundle: Path, policy: str, args: argparse.Namespace, overlap=None):  # type: ignore[no-untyped-def]
    from spac_ort.runtime import Generator
    from spac_ort.runtime.config import TierConfig
    from spac_ort.runtime.sessions import fast_providers
    from spac_ort.runtime.spac.policies import SpacOptions
    from spac_ort.runtime.spac.utility import UtilityConfig

    providers = fast_providers(args.backbone_provider)      # embed, layer graphs, head, draft
    if policy == "none":
        return Generator.from_bundle(bundle, threads=args.threads, providers=providers)
    budget = None if policy == "resident" else args.fast_budget
    return Generator.from_bundle(bundle, threads=args.threads, providers=providers,
                                 tiers=TierConfig(policy, budget, None, fast_providers(args.fast_provider),
                                                  profile=_profile(bundle, args), link_bytes_per_s=_link(args),
                                                  overlap=overlap, expert_quant=getattr(args, "expert_quant", None),
                                                  fast_quant=getattr(args, "fast_quant", None),
                                                  spac=SpacOptions(utility=UtilityConfig.for_mode(
                                                      getattr(args, "utility", "fixed")))))


def _link(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return args.link_gbps * 1e9 if args.link_gbps else None


_PROFILES: dict = {}


def _profile(bundle: Path, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """With --calibrate: the balancer's cost model measured once on this machine (the fast
    tier on --fast-provider, the CPU lane with --threads), shared by every policy."""
    if not args.calibrate:
        return None
    if bundle not in _PROFILES:
        from spac_ort.runtime.calibrate import calibrate_for_run
        from spac_ort.runtime.sessions import fast_providers

        _PROFILES[bundle] = calibrate_for_run(bundle, fast_providers(args.fast_provider), args.threads, _link(args),
                                              fast_quant=getattr(args, "fast_quant", None))
        print(f"calibrated: {_PROFILES[bundle]}", flush=True)
    return _PROFILES[bundle]


def _policy_run(bundle: Path, policy: str, tapes: list, args: argparse.Namespace) -> dict:
    from spac_ort.runtime.tape import Replay

    t0 = time.perf_counter()
    gen = _generator(bundle, policy, args)
    load_s = time.perf_counter() - t0
    rows, same, pieces, decoding = [], 0, {}, {}
    with gen:
        for i, tape in enumerate([tapes[0], *tapes]):
            Replay(tape, gen.manifest).attach(gen)
            out = list(gen.generate(list(tape.prompt), max_new_tokens=len(tape.tokens),
                                    draft_tokens=args.draft_tokens))
            if i == 0:
                continue                                   # warm-up
            r = gen.report
            same += out == list(tape.tokens)
            tiers = r.tiers or {}
            for piece, seconds in r.piece_seconds.items():
                pieces[piece] = pieces.get(piece, 0.0) + seconds
                decoding[piece] = decoding.get(piece, 0.0) + seconds - r.prefill_piece_seconds.get(piece, 0.0)
            rows.append({"domain": tape.domain, "tokens_per_s": r.tokens_per_second, "hit_rate": tiers.get("hit_rate"),
                         "mb_to_fast_per_token": tiers.get("bytes_to_fast_per_token", 0.0) / 1e6,
                         "accepted_per_window": r.mean_accepted, "speculative": r.speculative,
                         "decode_s": r.decode_seconds, "new_tokens": r.new_tokens, "prefill_s": r.prefill_seconds,
                         "fast_share": tiers.get("fast_share"), "fetch_fallbacks": tiers.get("fetch_fallbacks"),
                         "fetches": (tiers.get("fetches_on_demand", 0) or 0) + (tiers.get("fetches_prefetch", 0) or 0)})
    tokens = sum(r["new_tokens"] - 1 for r in rows)
    hits = [r["hit_rate"] for r in rows if r["hit_rate"] is not None]
    return {"policy": policy, "load_s": load_s, "reproduced": same, "tapes": len(rows),
            "tokens_per_s": tokens / sum(r["decode_s"] for r in rows),
            "hit_rate": statistics.mean(hits) if hits else None,
            "accepted_per_window": statistics.mean(r["accepted_per_window"] for r in rows),
            "mb_to_fast_per_token": statistics.mean(r["mb_to_fast_per_token"] for r in rows),
            "prefill_ms_median": 1e3 * statistics.median(r["prefill_s"] for r in rows),
            "ms_per_token_by_piece": {k: v * 1e3 / tokens for k, v in sorted(pieces.items(), key=lambda kv: -kv[1])},
            "decode_ms_per_token_by_piece": {k: v * 1e3 / tokens for k, v in
                                             sorted(decoding.items(), key=lambda kv: -kv[1])},
            "per_tape": rows}


def first_per_domain(tapes: list, n: int) -> list:
    """The first ``n`` tapes of each domain, in their order."""
    seen: dict = {}
    return [t for t in tapes if seen.setdefault(t.domain, []).append(t) or len(seen[t.domain]) <= n]


def run_cmd(args: argparse.Namespace) -> None:
    from spac_ort.manifest import load_manifest
    from spac_ort.runtime.tape import load_tapes

    tapes = load_tapes(args.tapes)
    if args.per_domain:
        tapes = first_per_domain(tapes, args.per_domain)
    tapes = tapes[: args.limit or None]
    m = load_manifest(args.bundle)
    results = {}
    for policy in args.policies:
        print(f"{policy} ...", file=sys.stderr, flush=True)
        results[policy] = _policy_run(args.bundle, policy, tapes, args)
    rate = {p: r["tokens_per_s"] for p, r in results.items()}
    base = [rate[p] for p in BASELINES if p in rate]
    mean_base = statistics.mean(base) if base else None
    rows = []
    for p, r in results.items():
        rows.append([p, r["tokens_per_s"], _ratio(rate[p], rate.get("sd-static")), _ratio(rate[p], mean_base),
                     _ratio(rate[p], rate.get("resident")), "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}",
                     r["accepted_per_window"], r["mb_to_fast_per_token"], r["prefill_ms_median"],
                     f"{r['reproduced']}/{r['tapes']}"])
    print(table(["policy", "tok/s", "x sd-static", "x baseline mean", "x resident", "hit rate", "accepted/window",
                 "MB to fast/token", "prefill ms (median)", "tapes reproduced"], rows))
    out = {"machine": machine(), "bundle": str(args.bundle), "layers": m.dims.num_layers,
           "hidden": m.dims.hidden_size, "experts": m.dims.num_experts, "expert_intermediate": m.dims.expert_intermediate,
           "fast_provider": args.fast_provider, "backbone_provider": args.backbone_provider, "fast_budget": args.fast_budget, "draft_tokens": args.draft_tokens,
           "threads": args.threads, "tapes": len(tapes), "link_gbps_emulated": args.link_gbps or None,
           "expert_quant": args.expert_quant, "fast_quant": args.fast_quant, "utility": args.utility,
           "profile": dataclasses.asdict(_PROFILES[args.bundle]) if args.bundle in _PROFILES else None,
           "results": results,
           "spac_vs_sd_static": _ratio(rate.get("spac"), rate.get("sd-static")),
           "spac_vs_baseline_mean": _ratio(rate.get("spac"), mean_base),
           "spac_vs_resident": _ratio(rate.get("spac"), rate.get("resident"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for p, r in results.items():
        split = ", ".join(f"{k} {v:.1f}" for k, v in r["decode_ms_per_token_by_piece"].items())
        print(f"{p}: ms per token in decoding: {split}")
    print(f"wrote {args.out}")


def _ratio(a, b):  # type: ignore[no-untyped-def]
    return a / b if a is not None and b else None


def _draft_tokens(value: str):  # type: ignore[no-untyped-def]
    return value if value == "auto" else int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record tapes on the reference model")
    rec.add_argument("--per-domain", type=int, default=2)
    rec.add_argument("--new-tokens", type=int, default=64)
    rec.add_argument("--bundles", type=Path, default=ROOT / "bench-out")
    rec.add_argument("--out", type=Path, default=TAPES)
    run = sub.add_parser("run", help="replay the tapes on a synthetic bundle under each policy")
    run.add_argument("--bundle", type=Path, required=True)
    run.add_argument("--tapes", type=Path, default=TAPES)
    run.add_argument("--limit", type=int, default=0, help="replay only the first N tapes")
    run.add_argument("--per-domain", type=int, default=0, help="replay only the first N tapes of each domain")
    run.add_argument("--policies", nargs="+", default=list(POLICIES))
    run.add_argument("--fast-provider", default="cpu")
    run.add_argument("--fast-budget", default="17%")
    run.add_argument("--backbone-provider", default="cpu", help="cpu, or cuda: ONNX Runtime places each node of "
                                                                "the non-expert graphs on CUDA where it has a kernel")
    run.add_argument("--draft-tokens", type=_draft_tokens, default=4)
    run.add_argument("--expert-quant", choices=("none", "int8", "int4"), default="none",
                     help="the tiers' expert precision (as spac-run's)")
    run.add_argument("--fast-quant", choices=("same", "fp32", "fp16", "int8", "int4"), default="same",
                     help="the fast tier's precision apart (as spac-run's)")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--utility", choices=("fixed", "scaled", "adaptive"), default="fixed",
                     help="spac's utility estimator mode (spac-run --utility)")
    run.add_argument("--link-gbps", type=float, default=0.0, help="EMULATE a slower host-to-fast-tier link: every "
                     "copy takes at least bytes / rate (e.g. 25 for a PCIe 4.0 x16 class link)")
    run.add_argument("--calibrate", action="store_true", help="measure the balancer's cost model on this machine "
                     "first (default: the CPU stand-in profile)")
    run.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "realsize_cpu.json")
    args = ap.parse_args()
    (record_cmd if args.cmd == "record" else run_cmd)(args)


if __name__ == "__main__":
    main()
