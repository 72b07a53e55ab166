"""Expert stacks at each precision on an accelerator against the same stacks in host memory
(lane-call time and largest difference), and greedy tokens with fp16, int8 and int4 slots
on the accelerator against the plain CPU run of a bundle (integer slots also against the
same slots on the CPU provider, its QMoE lane). ``--fixed-k``: instead, fp16 lanes that
hold fewer experts than a token chose, run at k = top-k on the accelerator (the fillers
weigh 0) against the host's fp16 lane at the lane's own k.

    python -m benchmarks.fast_quant_check --bundle demo-bundle --out fast_quant_cuda_check.json
    python -m benchmarks.fast_quant_check --fixed-k --bundle demo-bundle --out fixed_k_fill_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spac_ort.runtime.calibrate import median_time
from spac_ort.runtime.sessions import CPU, CUDA
from spac_ort.runtime.tiers.pinned import PinnedCopier
from spac_ort.runtime.tiers.pools import ExpertStack, interleaved
from spac_ort.runtime.tiers.quant import FP16, ExpertLayout

PROMPTS = ("def add(a, b):", "The river", "Il était une fois", "import numpy as np", "Der Hund", "int main(void) {")
PRECISIONS = (("fp32", None), ("fp16", FP16), ("int8", 8), ("int4", 4))


def lanes(h: int, i: int, n: int, providers: tuple[str, ...]) -> dict:
    rng = np.random.default_rng(0)
    base = [interleaved(*((rng.standard_normal(s) * 0.02).astype(np.float32) for s in ((h, i), (h, i), (i, h))))
            for _ in range(8)]
    copier = PinnedCopier.create() if providers[0] != CPU else None
    out: dict = {"pinned": copier is not None}
    for name, bits in PRECISIONS:
        enc = [ExpertLayout(h, i, bits).encode(*w) for w in base]
        host, dev = ExpertStack(n, h, i, bits=bits), ExpertStack(n, h, i, providers, copier=copier, bits=bits)
        for e in range(n):
            host.write_raw(e, enc[e % 8])
            dev.write_raw(e, enc[e % 8])
        row: dict = {"bytes_per_expert": ExpertLayout(h, i, bits).nbytes}
        t0 = time.perf_counter()
        for e in range(n):                       # host arrays as they are (pageable), one write per expert
            dev.write_raw(e, enc[e % 8])
        row["copy_ms_per_expert"] = (time.perf_counter() - t0) * 1e3 / n
        for t in (1, 5):
            x = rng.standard_normal((1, t, h)).astype(np.float32)
            index = np.stack([(np.arange(8) * 5 + r) % n for r in range(t)])
            w = np.full((t, 8), 0.125, np.float32)
            yh, yd = host.run(x, index, w), dev.run(x, index, w)
            row[f"T{t}"] = {"cuda_ms": 1e3 * median_time(lambda: dev.run(x, index, w), 30),     # the device's lane
                            "cpu_ms": 1e3 * median_time(lambda: host.run(x, index, w), 5),
                            "rel_diff_cuda_vs_cpu": float(np.abs(yd - yh).max() / np.abs(yh).max())}
        if dev.gathered:
            row["first_call_ms_by_entries"] = first_calls(dev, h, n, rng)
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def first_calls(stack: ExpertStack, h: int, n: int, rng: np.random.Generator) -> dict:
    """A gathered lane's first call at each entry count (a new operator shape), then its median."""
    out = {}
    for t, used in ((1, 16), (1, 24), (3, 24), (3, 32), (5, 40)):
        x = rng.standard_normal((1, t, h)).astype(np.float32)
        index = np.stack([(np.arange(8) + r * 8) % used for r in range(t)])
        w = np.full(index.shape, 0.125, np.float32)
        t0 = time.perf_counter()
        stack.run(x, index, w)
        out[f"T{t}_A{used}"] = {"first_ms": (time.perf_counter() - t0) * 1e3,
                                "median_ms": 1e3 * median_time(lambda: stack.run(x, index, w), 10)}
    return out


def fixed_k(h: int, i: int, n: int, providers: tuple[str, ...]) -> dict:
    """Largest relative difference, per (T, experts kept of 8), of a fixed-k fp16 lane
    against the host's fp16 lane at its own k (row 0 of every window keeps one expert)."""
    rng = np.random.default_rng(0)
    enc = [ExpertLayout(h, i, FP16).encode(*interleaved(*((rng.standard_normal(s) * 0.02).astype(np.float32)
                                                         for s in ((h, i), (h, i), (i, h))))) for _ in range(8)]
    host = ExpertStack(n, h, i, bits=FP16)
    dev = ExpertStack(n, h, i, providers, copier=PinnedCopier.create() if providers[0] != CPU else None, bits=FP16)
    dev.fixed_k = True                           # already so on a device; forced on a CPU
    for e in range(n):
        host.write_raw(e, enc[e % 8])
        dev.write_raw(e, enc[e % 8])
    out: dict = {"fixed_k_device": dev.fixed_k, "fixed_k_host": host.fixed_k}
    for t, keep in ((1, 3), (5, 2), (9, 5), (5, 8)):
        x = rng.standard_normal((1, t, h)).astype(np.float32)
        index = np.stack([(np.arange(8) * 5 + r) % n for r in range(t)])
        index[:, keep:] = -1
        index[0, 1:] = -1
        w = rng.random((t, 8)).astype(np.float32)
        yh, yd = host.run(x, index, w), dev.run(x, index, w)
        out[f"T{t}_keep{keep}"] = float(np.abs(yd - yh).max() / np.abs(yh).max())
        print(t, keep, out[f"T{t}_keep{keep}"], flush=True)
    return out


def tokens(bundle: Path, providers: tuple[str, ...]) -> dict:
    from spac_ort.runtime import Generator
    from spac_ort.runtime.config import TierConfig

    def run(tiers=None):  # type: ignore[no-untyped-def]
        with Generator.from_bundle(bundle, tiers=tiers) as gen:
            return [list(gen.generate(p, max_new_tokens=16, stop_at_eos=False)) for p in PROMPTS], gen.report.tiers

    def equal(got: list, ref: list) -> dict:
        return {"prompts_equal": sum(a == b for a, b in zip(got, ref)), "of": len(ref),
                "tokens_equal": sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(got, ref))}

    ref, _ = run()
    out = {}
    for quant in ("fp16", "int8", "int4"):
        for policy, budget in (("resident", None), ("lru", "10%")):
            try:
                got, t = run(TierConfig(policy, budget, fast_providers=providers, fast_quant=quant))
            except Exception as exc:        # e.g. slots refused on this provider: recorded, not fatal
                out[f"demo_{policy}_{quant}"] = {"error": str(exc)}
                continue
            row = {**equal(got, ref), "fast_experts": t["fast_experts"], "fast_tier": t["fast_tier"]}
            if quant != "fp16":             # the same integers on the CPU provider's QMoE lane
                row["against_cpu_slots"] = equal(got, run(TierConfig(policy, budget, fast_quant=quant))[0])
            out[f"demo_{policy}_{quant}"] = row
            print(policy, quant, row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--slots", type=int, default=43)
    ap.add_argument("--bundle", type=Path, help="also compare greedy tokens of this bundle (16 per prompt)")
    ap.add_argument("--fixed-k", action="store_true", help="compare fixed-k fp16 lanes instead of the precisions")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    providers = (CUDA, CPU) if args.provider == "cuda" else (CPU,)
    result = (fixed_k if args.fixed_k else lanes)(args.hidden, args.inter, args.slots, providers)
    if args.bundle is not None:
        result.update(tokens(args.bundle, providers))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
