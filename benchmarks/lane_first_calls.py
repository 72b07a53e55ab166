"""First calls of a fast-tier lane on a device: what a fresh lane session pays at each new
width and k, and which widths a session then runs without paying again.

    python -m benchmarks.lane_first_calls --provider cuda --out docs/results/lane_first_calls_h200.json

Real-size experts (hidden 2048, intermediate 768) in fp16 slots, random weights, random
routing; three calls per case, milliseconds, each call's wall time from Python.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .common import machine

HIDDEN, INTER, TOP_K = 2048, 768, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from spac_ort.runtime.sessions import fast_providers
    from spac_ort.runtime.tiers.pools import SlotPool
    from spac_ort.runtime.tiers.quant import FP16

    providers = fast_providers(a.provider)
    rng = np.random.default_rng(0)
    out: dict = {"machine": machine(), "provider": a.provider}

    def call(pool: SlotPool, t: int, k: int) -> float:
        x = rng.standard_normal((1, t, HIDDEN)).astype(np.float32)
        index = np.stack([rng.choice(pool.n, TOP_K, replace=False) for _ in range(t)])
        index[:, k:] = -1
        weights = np.full((t, TOP_K), 0.1, np.float32)
        t0 = time.perf_counter()
        pool.run(x, index, weights)
        return (time.perf_counter() - t0) * 1e3

    def case(name: str, pool: SlotPool, t: int, k: int, n: int = 3) -> None:
        ms = [call(pool, t, k) for _ in range(n)]
        out[name] = ms
        print(f"{name}: " + " ".join(f"{m:7.2f}" for m in ms) + " ms", flush=True)

    pool = SlotPool(32, HIDDEN, INTER, providers, bits=FP16)
    pool.fixed_k = False                      # one session per k, as a CPU lane runs
    for k in (8, 3):
        for t in (1, 2, 5, 9):
            case(f"fresh_k{k}_T{t}", pool, t, k)
    for t in (3, 4, 6, 7, 8):                 # k = 8 after widths 1, 2, 5, 9
        case(f"unseen_k8_T{t}", pool, t, 8, 2)
    big = SlotPool(256, HIDDEN, INTER, providers, bits=FP16)
    for t in (1, 5):
        case(f"n256_k8_T{t}", big, t, 8, 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
