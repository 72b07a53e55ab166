"""Greedy tokens of a jetson target's fp16 graphs (and of its fp32 base) on an accelerator
against the base bundle on the CPU: how many prompts stay identical, where each departs,
and the median tokens/s.

    python -m benchmarks.fp16_tokens --base demo-bundle --fp16 demo-jetson --out fp16_tokens.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from spac_ort.runtime import Generator
from spac_ort.runtime.sessions import CPU, CUDA

ROOT = Path(__file__).resolve().parents[1]


def _agreeing(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the fp32 bundle")
    ap.add_argument("--fp16", type=Path, required=True, help="its jetson target (spac-export target jetson)")
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--prompts", type=Path, default=ROOT.parent / "shared" / "refmodel" / "prompts.jsonl")
    ap.add_argument("--every", type=int, default=10, help="take every N-th prompt of the file")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    lines = [json.loads(x) for x in args.prompts.read_text(encoding="utf-8").splitlines() if x.strip()]
    prompts = [x["prompt"] for x in lines[::args.every]]
    dev = (CUDA, CPU) if args.provider == "cuda" else (CPU,)
    cells = {"fp32-cpu": (args.base, (CPU,)), f"fp32-{args.provider}": (args.base, dev),
             f"fp16-{args.provider}": (args.fp16, dev)}
    gens = {k: Generator.from_bundle(b, providers=p) for k, (b, p) in cells.items()}
    out: dict = {k: [] for k in cells}
    rates: dict = {k: [] for k in cells}
    for prompt in prompts:                       # each prompt through every cell in turn
        for k, gen in gens.items():
            out[k].append(list(gen.generate(gen.encode(prompt), max_new_tokens=args.new_tokens,
                                            speculative=False, stop_at_eos=False)))
            rates[k].append(gen.report.tokens_per_second)
    ref = out["fp32-cpu"]
    result: dict = {"prompts": len(prompts), "tokens": args.new_tokens}
    for k in cells:
        result[k] = {"identical_to_fp32_cpu": sum(a == b for a, b in zip(out[k], ref)),
                     "prefixes": [_agreeing(a, b) for a, b in zip(out[k], ref)],
                     "median_tok_s": statistics.median(rates[k])}
        gens[k].close()
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
