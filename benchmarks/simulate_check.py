"""Check the simulator against measurements on this machine: record a trace per K on the
reference model, measure the system profile, predict tokens/s per policy, then run the
same cells and compare.

    python -m benchmarks.simulate_check --per-domain 1 --out docs/results/simulate_check.json

``--fast-provider cuda`` (and ``--backbone-provider cuda``) checks it on an accelerator: the
calibration, the system profile and the measured cells then use those providers, and the
lanes overlap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import ROOT, load_prompts, machine, table

POLICIES = {"cpu": 0, "static": 0, "lru": 0, "sd-static": 4, "spac": 4, "resident": 4}


def _trace(bundle: Path, prompts: list[dict], k: int, new_tokens: int, path: Path) -> None:
    from spac_ort.runtime import Generator
    from spac_ort.runtime.sensor import TraceWriter

    writer = TraceWriter(path)
    with Generator.from_bundle(bundle) as gen:
        gen.step_observers.append(writer)
        for p in prompts:
            list(gen.generate(p["prompt"], max_new_tokens=new_tokens, stop_at_eos=False,
                              draft_tokens=k if k else 4, speculative=bool(k)))
    writer.close()


def main() -> None:
    from spac_ort.bench.grid import Cell, Prompt, summarise
    from spac_ort.bench.runner import run_grid
    from spac_ort.bench.simulate import measure_system_file, predict_grid
    from spac_ort.runtime.calibrate import calibrate
    from spac_ort.runtime.sessions import fast_providers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bench-out" / "ref-fused")
    ap.add_argument("--per-domain", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--budget", type=float, default=0.17, help="fast budget, a share of all experts")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "simulate_check.json")
    ap.add_argument("--fast-provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backbone-provider", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    prompts = load_prompts(args.per_domain)
    args.work.mkdir(parents=True, exist_ok=True)
    traces = {k: args.work / f"sim-trace-k{k}.jsonl" for k in (0, 4)}
    for k, path in traces.items():
        _trace(args.bundle, prompts, k, args.new_tokens, path)
    fast, backbone = fast_providers(args.fast_provider), fast_providers(args.backbone_provider)
    device = calibrate(args.bundle, fast, repeats=20)
    budget = f"{100 * args.budget:g}%"
    system = measure_system_file(args.bundle, {p: traces[k] for p, k in POLICIES.items()}, device,
                                 args.fast_provider != "cpu", [p["prompt"] for p in prompts], budget, (fast, backbone))
    predicted = {row["policy"]: row for k, trace in traces.items()        # each policy on the trace of its K
                 for row in predict_grid(args.bundle, trace, system, [p for p, kk in POLICIES.items() if kk == k],
                                         [budget])}
    cells = [Cell(p, None if p == "resident" else budget, None if k == 0 else k) for p, k in POLICIES.items()]
    items = [(Prompt(p["prompt"], None, p["domain"], args.new_tokens), None) for p in prompts]
    rows = {r["policy"]: r for r in summarise(run_grid(args.bundle, cells, items, profile=device, fast_provider=fast,
                                                       backbone=backbone))
            if r["domain"] == "all"}
    out = {"machine": machine(), "bundle": str(args.bundle), "prompts": len(prompts), "budget": budget,
           "fast_provider": args.fast_provider, "backbone_provider": args.backbone_provider,
           "system": json.loads(json.dumps(system, default=lambda o: o.__dict__)), "policies": {}}
    table_rows = []
    for policy in POLICIES:
        pred, meas = predicted[policy], rows[policy]
        ratio = pred["tokens_per_s"] / meas["tokens_per_s"]
        out["policies"][policy] = {"predicted": pred, "measured_tokens_per_s": meas["tokens_per_s"],
                                   "measured_hit_rate": meas["hit_rate"], "predicted_over_measured": ratio}
        table_rows.append([policy, pred["tokens_per_s"], meas["tokens_per_s"], f"{ratio:.2f}",
                           f"{pred['hit_rate']:.1%}", "-" if meas["hit_rate"] is None else f"{meas['hit_rate']:.1%}"])
    print(table(["policy", "predicted tok/s", "measured tok/s", "predicted / measured", "predicted hit rate",
                 "measured hit rate"], table_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
