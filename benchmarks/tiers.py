"""Heterogeneous execution on the reference model: fast-tier hit rate and bytes moved at
equal fast budgets, for spac, lru and a static most-used set, plus spac's ablations; and
the balancer's decision time.

    python -m benchmarks.tiers --budgets 5 10 17 30 --per-domain 1 --new-tokens 64

The fast tier is a CPU stand-in on this machine, so the numbers are counts and bytes, not
times. spac's balancer costs experts as Qwen3-30B-A3B experts on a PCIe 4.0 GPU host (the
reference model copies that routing shape): fast 65 us + 2 us/token, CPU 1.6 ms +
0.1 ms/token, a transfer 10 us + 9.4 MB / 25 GB/s. Calibration counts for the static
most-used set come from other prompts than the ones measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, table
from spac_ort.profile import DeviceProfile
from spac_ort.runtime import Generator
from spac_ort.runtime.config import TierConfig
from spac_ort.runtime.spac.balancer import LayerDemand, balance
from spac_ort.runtime.spac.policies import Spac, SpacOptions, StaticTop
from spac_ort.runtime.spac.utility import UtilityConfig

QWEN3_EXPERT_BYTES = 3 * 2048 * 768 * 2          # fp16 expert of Qwen3-30B-A3B


def gpu_profile(expert_bytes: int) -> DeviceProfile:
    scale = expert_bytes / QWEN3_EXPERT_BYTES    # same transfer time per expert as the real model
    return DeviceProfile("pcie4-gpu, qwen3-30b expert costs", 65e-6, 2e-6, 1.6e-3, 1e-4, 10e-6, 25e9 * scale)


def calibrate(bundle: Path, prompts: list[dict], new_tokens: int) -> np.ndarray:
    gen = Generator.from_bundle(bundle)
    usage = np.zeros((gen.manifest.dims.num_layers, gen.manifest.dims.num_experts))
    gen.step_observers.append(type("U", (), {"on_step": lambda self, r: usage.__iadd__(r.counts)})())
    for p in prompts:
        list(gen.generate(p["prompt"], max_new_tokens=new_tokens, stop_at_eos=False))
    return usage


def run(bundle, policy, budget, prompts, new_tokens, profile, sync=False) -> dict:
    tiers = TierConfig(policy, f"{budget}%", profile=profile, overlap=not sync)
    agg = {"pairs": 0, "hit": 0, "fast": 0, "bytes": 0, "tokens": 0, "prefetch": 0, "demand": 0, "evict": 0}
    with Generator.from_bundle(bundle, tiers=tiers) as gen:
        tier = gen.experts
        for p in prompts:
            list(gen.generate(p["prompt"], max_new_tokens=new_tokens, stop_at_eos=False, draft_tokens=4))
            if tier.prefetcher:
                tier.prefetcher.drain()
        st = tier.counters
        s = tier.summary(1)
        agg.update(pairs=st.pairs, hit=st.pairs_hit, fast=st.pairs_fast, bytes=s["bytes_to_fast"],
                   prefetch=s["fetches_prefetch"], demand=s["fetches_on_demand"], evict=s["evictions"],
                   balancer=s["balancer_paths"])
        tokens = len(prompts) * new_tokens
    return {"hit_rate": agg["hit"] / agg["pairs"], "fast_share": agg["fast"] / agg["pairs"],
            "bytes_per_token": agg["bytes"] / tokens, "prefetched": agg["prefetch"], "on_demand": agg["demand"],
            "evictions": agg["evict"], "balancer": agg.get("balancer", {})}


def balancer_timing(profile: DeviceProfile, expert_bytes: int, repeats: int = 200) -> list[dict]:
    """Decision time per layer. Tokens per active expert follow what verify windows show
    (mostly 1-2: geometric, p=0.55, at most 9); 30% of the active experts are resident;
    8 free slots."""
    rng = np.random.default_rng(0)
    rows = []
    for n in (8, 16, 32, 64):
        times, paths = [], {}
        for _ in range(repeats):
            tokens = np.minimum(rng.geometric(0.55, n), 9)
            d = LayerDemand(np.arange(n), tokens, rng.random(n) < 0.3, rng.integers(0, 6, n))
            a = balance(d, profile, expert_bytes, free_slots=8)
            times.append(a.solve_seconds)
            paths[a.path] = paths.get(a.path, 0) + 1
        rows.append({"active_experts": n, "median_us": statistics.median(times) * 1e6,
                     "p90_us": float(np.percentile(times, 90)) * 1e6, "paths": paths})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 17, 30])
    ap.add_argument("--per-domain", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "tiers.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle("ref", args.work, draft=True)
    prompts = load_prompts(args.per_domain)
    ids = {p["id"] for p in prompts}
    calib = [p for p in load_prompts(20)[::5] if p["id"] not in ids]
    usage = calibrate(bundle, calib, args.new_tokens)
    eb = Generator.from_bundle(bundle).manifest.experts.data_size
    prof = gpu_profile(eb)
    scaled = UtilityConfig.for_mode("scaled")
    configs = {
        "lru": lambda: "lru",
        "static most-used": lambda: StaticTop(usage),
        "spac": lambda: Spac(SpacOptions(utility=scaled)),
        "spac, estimator off": lambda: Spac(SpacOptions(utility=scaled, estimator=False)),
        "spac, fixed threshold": lambda: Spac(SpacOptions(utility=scaled, balancer=False)),
        "spac, cold start": lambda: Spac(SpacOptions(utility=scaled, warm_start=False)),
        "spac, evict within level": lambda: Spac(SpacOptions(utility=scaled, evict_within_level=True)),
        "spac, sync prefetch": lambda: (Spac(SpacOptions(utility=scaled)), True),
    }
    results = []
    t0 = time.time()
    for budget in args.budgets:
        for name, make in configs.items():
            pol = make()
            sync = False
            if isinstance(pol, tuple):
                pol, sync = pol
            r = run(bundle, pol, budget, prompts, args.new_tokens, prof, sync)
            r.update(config=name, budget_pct=budget)
            results.append(r)
            print(f"[{time.time() - t0:6.0f}s] {budget:>4}% {name:<24} hit {r['hit_rate']:.1%}", flush=True)
    modes = []
    for mode in ("fixed", "scaled", "adaptive"):
        r = run(bundle, Spac(SpacOptions(utility=UtilityConfig.for_mode(mode))), 17, prompts, args.new_tokens, prof)
        r.update(config=f"spac, utility {mode}", budget_pct=17)
        modes.append(r)
    print()
    print(table(["budget", "config", "hit rate", "fast share", "MB to fast/token", "prefetched", "on demand",
                 "evictions"],
                [[f"{r['budget_pct']:g}%", r["config"], f"{r['hit_rate']:.1%}", f"{r['fast_share']:.1%}",
                  r["bytes_per_token"] / 1e6, r["prefetched"], r["on_demand"], r["evictions"]]
                 for r in results + modes]))
    timing = balancer_timing(prof, eb)
    print()
    print(table(["active experts", "median us", "p90 us", "paths"],
                [[r["active_experts"], r["median_us"], r["p90_us"], r["paths"]] for r in timing]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "profile": prof.__dict__, "prompts": len(prompts),
                                    "new_tokens": args.new_tokens, "results": results, "utility_modes": modes,
                                    "balancer_timing": timing}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
