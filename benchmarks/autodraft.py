"""Adaptive draft length: plain decoding vs a fixed K vs ``draft_tokens="auto"``, per domain.

``auto`` runs twice: as shipped (drafts from the draft model or the context), and with
the draft model's drafts only (``lookup=False``), which shows what each source brings.

    python -m benchmarks.autodraft --per-domain 4 --repeats 2 --new-tokens 128

CPU, fp32, greedy, all experts resident, EOS ignored. The three configurations run in one
process, one generator each, on the same prompt in turns of 50 ms of decoding (each
round draws the order of the turns and which generator runs which configuration), so a
noisy machine slows them alike and each pays the same cold start per turn; a
generator's decode time excludes the time spent in the others. Tokens/s is decode throughput summed over a domain's rounds
(new tokens after the first over decode seconds); the paired ratio is the geometric mean
of auto / plain over the rounds with a 95% interval. Plain decoding runs twice; the
second run against the first (A/A) shows the resolution of the measurement. Every output
is checked token for token against plain decoding. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Union

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, table
from spac_ort.runtime import Generator

Draft = Union[int, str, None]          # draft_tokens; None = plain decoding


MODEL_ONLY = "auto-model"              # auto without drafts from the context


def configs(k: int) -> list[tuple[str, Draft]]:
    """The compared configurations, and plain decoding once more: an A/A control that shows
    how far two identical configurations drift apart in this measurement."""
    return [("plain", None), (f"K={k}", k), ("auto", "auto"), ("auto, model drafts only", MODEL_ONLY),
            ("plain again", None)]


def _result(gen: Generator, tokens: list[int]) -> dict:
    r = gen.report
    return {"tokens": tokens, "decode_tokens": r.new_tokens - 1, "decode_seconds": r.decode_seconds,
            "proposed": r.proposed, "accepted": r.accepted, "k_histogram": dict(r.k_histogram),
            "lookup_windows": r.lookup_windows, "lookup_proposed": r.lookup_proposed,
            "lookup_accepted": r.lookup_accepted}


def _stream(gen: Generator, ids: list[int], draft: Draft, new_tokens: int) -> Iterator[int]:
    return gen.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, speculative=draft is not None,
                        draft_tokens="auto" if draft in (None, MODEL_ONLY) else draft, lookup=draft != MODEL_ONLY)


def _slices(gens: dict[str, Generator], cfgs: list[tuple[str, Draft]], ids: list[int], new_tokens: int,
            slice_s: float) -> dict[str, list[int]]:
    """Run the configurations in turns of ``slice_s`` seconds of decoding each."""
    streams = {label: _stream(gens[label], ids, draft, new_tokens) for label, draft in cfgs}
    out: dict[str, list[int]] = {label: [] for label, _ in cfgs}
    while streams:
        for label in list(streams):
            start = gens[label].report.decode_seconds if out[label] else 0.0
            for token in streams[label]:
                out[label].append(token)
                if gens[label].report.decode_seconds - start >= slice_s:
                    break
            else:
                del streams[label]
    return out


def run_round(gens: dict[str, Generator], cfgs: list[tuple[str, Draft]], ids: list[int], new_tokens: int,
              slice_s: float) -> dict[str, dict]:
    """All configurations on one prompt, in the order of ``cfgs``: in turns of ``slice_s``
    seconds of decoding each (every configuration sees the same stretches of a busy
    machine and pays the same cold start per turn), or one after another if 0."""
    gc.collect()
    gc.disable()                    # no collector pauses inside timed runs
    try:
        if slice_s <= 0:
            out = {label: list(_stream(gens[label], ids, draft, new_tokens)) for label, draft in cfgs}
        else:
            out = _slices(gens, cfgs, ids, new_tokens, slice_s)
    finally:
        gc.enable()
    return {label: _result(gens[label], tokens) for label, tokens in out.items()}


def measure(gens: list[Generator], prompts: list[dict], k: int, new_tokens: int, repeats: int,
            slice_s: float, seed: int = 0) -> list[dict]:
    """One record per (prompt, round): the results of every configuration, by label. Each
    round draws which generator runs which configuration and in what order they take
    turns, so neither a generator's memory nor its neighbour in the turns favours one."""
    cfgs, rng = configs(k), random.Random(seed)
    tok = gens[0]
    run_round(dict(zip((label for label, _ in cfgs), gens)), cfgs, tok.encode(prompts[0]["prompt"]), 16,
              slice_s)                                                      # warm up sessions and caches
    records = []
    for p, _ in ((p, r) for p in prompts for r in range(repeats)):
        order = rng.sample(cfgs, len(cfgs))
        by_label = dict(zip((label for label, _ in cfgs), rng.sample(gens, len(gens))))
        results = run_round(by_label, order, tok.encode(p["prompt"]), new_tokens, slice_s)
        for label, res in results.items():
            assert res["tokens"] == results["plain"]["tokens"], f"{label} output differs on {p['id']}"
        records.append({"id": p["id"], "domain": p["domain"], "order": [label for label, _ in order],
                        "results": results})
    return records


def generators(bundle: Path, k: int) -> list[Generator]:
    """One generator per configuration (their runs interleave)."""
    return [Generator.from_bundle(bundle) for _ in configs(k)]


def paired(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ratios and its 95% interval (normal approximation in log space)."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _rate(res: dict) -> float:
    return res["decode_tokens"] / res["decode_seconds"]


def summarise_domain(records: list[dict], k: int) -> dict:
    fixed = f"K={k}"
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    hist: dict[int, int] = defaultdict(int)
    for rec in records:
        for label, res in rec["results"].items():
            for key in ("decode_tokens", "decode_seconds", "proposed", "accepted"):
                sums[label][key] += res[key]
        for kk, n in rec["results"]["auto"]["k_histogram"].items():
            hist[kk] += n
    tps = {label: s["decode_tokens"] / s["decode_seconds"] for label, s in sums.items()}
    gm, lo, hi = paired([_rate(r["results"]["auto"]) / _rate(r["results"]["plain"]) for r in records])
    mo = paired([_rate(r["results"]["auto, model drafts only"]) / _rate(r["results"]["plain"]) for r in records])
    auto = sums["auto"]
    looked = sum(r["results"]["auto"]["lookup_windows"] for r in records)
    looked_acc = sum(r["results"]["auto"]["lookup_accepted"] for r in records)
    looked_prop = sum(r["results"]["auto"]["lookup_proposed"] for r in records)
    aa = paired([_rate(r["results"]["plain again"]) / _rate(r["results"]["plain"]) for r in records])
    steps = sum(hist.values())
    return {
        "prompts": len({r["id"] for r in records}), "rounds": len(records),
        "plain_tokens_per_s": tps["plain"], "fixed_tokens_per_s": tps[fixed], "auto_tokens_per_s": tps["auto"],
        "fixed_acceptance": sums[fixed]["accepted"] / max(1.0, sums[fixed]["proposed"]),
        "auto_vs_plain": tps["auto"] / tps["plain"],
        "auto_vs_best": tps["auto"] / max(tps["plain"], tps[fixed]),
        "auto_vs_plain_paired": gm, "auto_vs_plain_paired_95": [lo, hi],
        "model_only_tokens_per_s": tps["auto, model drafts only"],
        "model_only_vs_plain_paired": mo[0], "model_only_vs_plain_paired_95": [mo[1], mo[2]],
        "auto_lookup_window_share": looked / max(1, steps - hist.get(0, 0)),
        "auto_lookup_acceptance": looked_acc / max(1, looked_prop),
        "auto_acceptance": auto["accepted"] / max(1.0, auto["proposed"]),
        "control_vs_plain_paired": aa[0], "control_vs_plain_paired_95": [aa[1], aa[2]],
        "auto_plain_share": hist.get(0, 0) / steps, "auto_mean_k": sum(kk * n for kk, n in hist.items()) / steps,
        "auto_k_histogram": dict(sorted(hist.items())),
    }


def summarise(records: list[dict], k: int) -> dict[str, dict]:
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_domain[rec["domain"]].append(rec)
    return {dom: summarise_domain(recs, k) for dom, recs in by_domain.items()}


def raw(records: list[dict]) -> list[dict]:
    """Per round: prompt, run order, decode tokens/s of each configuration."""
    return [{"id": r["id"], "order": r["order"], "tokens_per_s": {label: _rate(res) for label, res in
                                                                  r["results"].items()}} for r in records]


def rows(summary: dict[str, dict], model: str) -> list[list]:
    return [[model, dom, r["prompts"], r["plain_tokens_per_s"], r["fixed_tokens_per_s"], r["fixed_acceptance"],
             r["auto_tokens_per_s"],
             f"{r['auto_vs_plain_paired']:.2f} [{r['auto_vs_plain_paired_95'][0]:.2f}, "
             f"{r['auto_vs_plain_paired_95'][1]:.2f}]",
             r["auto_vs_best"], r["auto_plain_share"], r["auto_mean_k"], r["auto_lookup_window_share"],
             r["auto_lookup_acceptance"],
             f"{r['model_only_vs_plain_paired']:.2f} [{r['model_only_vs_plain_paired_95'][0]:.2f}, "
             f"{r['model_only_vs_plain_paired_95'][1]:.2f}]",
             f"{r['control_vs_plain_paired']:.2f} [{r['control_vs_plain_paired_95'][0]:.2f}, "
             f"{r['control_vs_plain_paired_95'][1]:.2f}]"]
            for dom, r in summary.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-domain", type=int, default=4, help="reference-model prompts per domain (0: skip)")
    ap.add_argument("--demo-prompts", type=int, default=2, help="demo-model prompts per domain (0: skip)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the three configurations per prompt")
    ap.add_argument("--k", type=int, default=4, help="the fixed K to compare with")
    ap.add_argument("--slice", type=float, default=0.05,
                    help="seconds of decoding per turn when alternating the configurations (0: one after another)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "autodraft.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results, rounds = {}, {}
    if args.per_domain:
        gens = generators(ensure_bundle("ref", args.work, draft=True), args.k)
        records = measure(gens, load_prompts(args.per_domain), args.k, args.new_tokens, args.repeats,
                          args.slice)
        results["ref"], rounds["ref"] = summarise(records, args.k), raw(records)
    if args.demo_prompts:
        gens = generators(ensure_bundle("demo", args.work, draft=True), args.k)
        prompts = [dict(p, domain="all") for p in load_prompts(args.demo_prompts)]
        records = measure(gens, prompts, args.k, args.new_tokens, args.repeats, args.slice)
        results["demo"], rounds["demo"] = summarise(records, args.k), raw(records)
    print(table(["model", "domain", "prompts", "plain tok/s", f"K={args.k} tok/s", f"K={args.k} acceptance",
                 "auto tok/s", "auto / plain, paired [95%]", f"auto / max(plain, K={args.k})",
                 "auto plain share", "auto mean K", "auto: windows from the context", "their acceptance",
                 "auto with model drafts only / plain, paired [95%]", "A/A: plain again / plain [95%]"],
                [row for model, summary in results.items() for row in rows(summary, model)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "new_tokens": args.new_tokens, "k": args.k,
                                    "per_domain": args.per_domain, "demo_prompts": args.demo_prompts,
                                    "repeats": args.repeats, "slice_seconds": args.slice, "results": results,
                                    "rounds": rounds}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
