"""Baseline throughput: spac-run (all experts resident, CPU, fp32, greedy) against
transformers' own fp32 ``generate`` on the same prompts, plus where spac-run's time goes,
with both plain expert backends (grouped calls, the default; one session per expert).

    python -m benchmarks.baseline --model demo --model ref --per-domain 2 --new-tokens 128

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, model_dirs, table
from spac_ort.runtime import Generator


def call_overhead_us(hidden: int, n: int = 3000) -> float:
    """Median cost of one ORT call through the runtime's Piece on a trivial graph
    (Identity on [1, 1, H]): the fixed price every piece pays."""
    import tempfile

    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from spac_ort.runtime.sessions import Piece

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", hidden])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", hidden])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity.onnx"
        onnx.save(model, path)
        piece = Piece(path)
        arr = np.zeros((1, 1, hidden), np.float32)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            piece(arr)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def bench_model(name: str, prompts: list[dict], new_tokens: int, out_root: Path) -> dict:
    from transformers import AutoModelForCausalLM

    bundle = ensure_bundle(name, out_root)
    gen = Generator.from_bundle(bundle)                       # default: grouped expert calls
    per_expert = Generator.from_bundle(bundle, experts="sessions")
    hf = AutoModelForCausalLM.from_pretrained(model_dirs(name)[0], dtype=torch.float32).eval()
    ours_e2e, ours_decode, hf_e2e, ort_share, calls_per_token, us_per_call = [], [], [], [], [], {}
    sessions_e2e, sessions_calls, sessions_us = [], [], []
    for p in prompts:
        ids = gen.encode(p["prompt"])
        t0 = time.perf_counter()
        n = len(list(gen.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, speculative=False)))
        ours_e2e.append(n / (time.perf_counter() - t0))
        r = gen.report
        ours_decode.append(r.tokens_per_second)
        ort_share.append(r.ort_seconds / r.total_seconds)
        calls_per_token.append(sum(r.piece_calls.values()) / n)
        for kind, secs in r.piece_seconds.items():
            us_per_call.setdefault(kind, []).append(secs / r.piece_calls[kind] * 1e6)
        t0 = time.perf_counter()
        m = len(list(per_expert.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, speculative=False)))
        sessions_e2e.append(m / (time.perf_counter() - t0))
        rs = per_expert.report
        sessions_calls.append(sum(rs.piece_calls.values()) / m)
        sessions_us.append(rs.piece_seconds["experts"] / rs.piece_calls["experts"] * 1e6)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            hf_e2e.append((out.shape[1] - len(ids)) / (time.perf_counter() - t0))
    med = statistics.median
    overhead = call_overhead_us(gen.manifest.dims.hidden_size)
    per_token_us = 1e6 / med(ours_decode)
    return {
        "model": name, "prompts": len(prompts), "new_tokens": new_tokens,
        "spac_tokens_per_s": med(ours_e2e), "spac_decode_tokens_per_s": med(ours_decode),
        "transformers_tokens_per_s": med(hf_e2e), "speedup": med(ours_e2e) / med(hf_e2e),
        "ort_share": med(ort_share), "ort_calls_per_token": med(calls_per_token),
        "us_per_call": {k: med(v) for k, v in us_per_call.items()},
        "sessions_tokens_per_s": med(sessions_e2e), "sessions_calls_per_token": med(sessions_calls),
        "sessions_us_per_expert_call": med(sessions_us),
        "call_overhead_us": overhead,
        "overhead_share": med(calls_per_token) * overhead / per_token_us,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=["demo", "ref"])
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "baseline.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(args.per_domain)
    results = [bench_model(m, prompts, args.new_tokens, args.work) for m in args.model or ["demo", "ref"]]
    print(table(["model", "prompts", "spac-run tok/s", "(decode only)", "transformers tok/s", "speedup",
                 "ORT share", "ORT calls/token", "call overhead us", "overhead share"],
                [[r["model"], r["prompts"], r["spac_tokens_per_s"], r["spac_decode_tokens_per_s"],
                  r["transformers_tokens_per_s"], r["speedup"], f"{r['ort_share']:.0%}",
                  r["ort_calls_per_token"], r["call_overhead_us"], f"{r['overhead_share']:.0%}"]
                 for r in results]))
    print()
    print(table(["model", "grouped tok/s", "calls/token", "per-expert sessions tok/s", "calls/token",
                 "us per expert call"],
                [[r["model"], r["spac_tokens_per_s"], r["ort_calls_per_token"], r["sessions_tokens_per_s"],
                  r["sessions_calls_per_token"], r["sessions_us_per_expert_call"]] for r in results]))
    print()
    kinds = sorted({k for r in results for k in r["us_per_call"]})
    print(table(["model", *[f"{k} us/call" for k in kinds]],
                [[r["model"], *[r["us_per_call"].get(k, float("nan")) for k in kinds]] for r in results]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
