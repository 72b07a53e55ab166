"""What quantized experts cost in quality, and what they save, on the reference model.

    python -m benchmarks.expert_quant --per-domain 5 --out docs/results/expert_quant.json

Per domain:
- the mean negative log-likelihood of each prompt's held-out ``continuation``, teacher-forced
  (its first --cont-tokens tokens);
- greedy agreement with fp32: whether --gen-tokens greedy tokens equal fp32's, and the
  common prefix length;
- decode tokens/s of that greedy run.

Every precision runs its experts through the same path, policy ``cpu`` (every expert in
the CPU lane's stack). So fp32 against int8 and int4 differs only in the experts' weights
and the operator (MoE or QMoE).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from .common import ROOT, agreement, load_prompts, machine, table

PRECISIONS = (None, "int8", "int4")


def _nll(gen, prompt_ids: list[int], cont_ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    """Mean NLL of ``cont_ids`` after ``prompt_ids``, one teacher-forced pass."""
    bb = gen.backbone
    ids = prompt_ids + cont_ids
    logits = bb.forward(ids, bb.new_cache(), last_only=False).astype(np.float64)      # [T, V]
    rows = logits[len(prompt_ids) - 1: len(ids) - 1]
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(cont_ids)), cont_ids].mean())


def main() -> None:
    from spac_ort.runtime import Generator
    from spac_ort.runtime.config import TierConfig
    from spac_ort.runtime.tiers.quant import ExpertLayout, bits_of

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bench-out" / "ref-fused")
    ap.add_argument("--per-domain", type=int, default=5)
    ap.add_argument("--cont-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "expert_quant.json")
    args = ap.parse_args()
    prompts = load_prompts(args.per_domain)
    per: dict = {}
    greedy: dict = {}
    for quant in PRECISIONS:
        name = quant or "fp32"
        with Generator.from_bundle(args.bundle, tiers=TierConfig("cpu", expert_quant=quant)) as gen:
            d = gen.manifest.dims
            nbytes = ExpertLayout(d.hidden_size, d.expert_intermediate, bits_of(quant)).nbytes
            for p in prompts:
                ids = gen.encode(p["prompt"])
                cont = gen.tokenizer.encode(p["continuation"], special=False)[: args.cont_tokens]
                out = list(gen.generate(ids, max_new_tokens=args.gen_tokens, stop_at_eos=False, speculative=False))
                row = per.setdefault((p["domain"], name), {"nll": [], "same": [], "prefix": [], "tok_s": []})
                row["nll"].append(_nll(gen, ids, cont))
                row["tok_s"].append(gen.report.tokens_per_second)
                ref = greedy.setdefault(p["id"], out)             # fp32 runs first
                row["same"].append(out == ref)
                row["prefix"].append(agreement(out, ref))
        per[("bytes", name)] = nbytes
        print(f"{name}: done ({nbytes} B per expert)", flush=True)
    domains = sorted({p["domain"] for p in prompts})
    rows, out = [], {"machine": machine(), "bundle": str(args.bundle), "per_domain": args.per_domain,
                     "cont_tokens": args.cont_tokens, "gen_tokens": args.gen_tokens, "domains": {}}
    for domain in [*domains, "all"]:
        for quant in PRECISIONS:
            name = quant or "fp32"
            keys = [(x, name) for x in (domains if domain == "all" else [domain])]
            vals = {k: [v for key in keys for v in per[key][k]] for k in ("nll", "same", "prefix", "tok_s")}
            r = {"nll": statistics.mean(vals["nll"]), "identical": statistics.mean(vals["same"]),
                 "prefix": statistics.mean(vals["prefix"]), "tokens_per_s": statistics.mean(vals["tok_s"]),
                 "bytes_per_expert": per[("bytes", name)]}
            out["domains"].setdefault(domain, {})[name] = r
            rows.append([domain, name, r["nll"], r["nll"] - out["domains"][domain]["fp32"]["nll"],
                         f"{r['identical']:.0%}", r["prefix"], r["tokens_per_s"], r["bytes_per_expert"]])
    print(table(["domain", "experts", "NLL", "NLL - fp32", f"greedy {args.gen_tokens} identical",
                 "common prefix", "decode tok/s", "bytes/expert"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
