"""PREDICTED decode tokens/s per placement policy on a Snapdragon 8 Gen 3 phone, a Jetson
AGX Orin 64GB and a Jetson Orin NX 16GB, for a model of Qwen3-30B-A3B's shape (with a
Qwen3-0.6B-shaped draft), at fast budgets that fit in their memory. Predictions from
specification-derived cost models (`spac_ort.targets.predict`), replayed over traces of
the reference model; no device was run.

    python -m benchmarks.edge_predict [--out docs/results/edge_predict.json]

Each cell gives tokens/s with the Python engine's own work (measured on this machine,
scaled by an assumed CPU speed), and in parentheses the hardware-only bound of a native
decode loop. Plain policies (cpu, static, lru) replay the plain trace; sd-static, spac
and resident the K=4 trace (as in benchmarks/simulate_check.py), and those named by
--plain (default: resident) the plain trace too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import ROOT, machine, table

if TYPE_CHECKING:
    from spac_ort.targets.predict import EngineCosts, ModelShape

# device, expert precision, dense precision, fast budgets (shares of all experts)
CONFIGS = (
    ("snapdragon-8-gen-3-phone", "int4", "int8", (0.10, 0.20, 0.30)),
    ("jetson-agx-orin-64gb", "int8", "fp16", (0.17, 0.30, 0.50)),
    ("jetson-orin-nx-16gb-nvme", "int4", "fp16", (0.17, 0.30, 0.50)),
    ("jetson-orin-nx-16gb-nvme", "int8", "fp16", (0.17, 0.30)),
)
POLICIES = ("cpu", "static", "lru", "sd-static", "spac", "resident")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _cell(row: dict) -> str:
    if not row["fits"]:
        return f"does not fit ({row['memory_bytes'] / 1e9:.1f} GB)"
    return f"{row['tokens_per_s']:.2f} ({row['native_tokens_per_s']:.2f})"


def _config(records: dict, device: str, experts: str, dense: str, shares: tuple, policies: list[str],
            engine: "EngineCosts", shape: "ModelShape", plain: set) -> list[dict]:
    from spac_ort.targets.predict import POLICY_K, deployment, predict_cell

    d = deployment(device, experts, dense)
    rows = []
    for policy in policies:
        runs = [(POLICY_K[policy], policy)] + ([(0, f"{policy}, K=0")] if policy in plain and POLICY_K[policy] else [])
        for k, label in runs:
            for share in ([1.0] if policy == "resident" else shares):
                row = predict_cell(records[k], policy, share, d, shape, engine)
                rows.append({**row, "device": device, "experts": experts, "dense": dense, "budget": share,
                             "label": label, "trace_k": k})
    return rows


def _tables(rows: list[dict], labels: list[str]) -> str:
    keys = list(dict.fromkeys((r["device"], r["experts"], r["dense"], r["budget"]) for r in rows
                              if not r["label"].startswith("resident")))
    lines, resident = [], {}
    for r in rows:
        if r["label"].startswith("resident"):
            resident.setdefault((r["device"], r["experts"], r["dense"]), []).append(f"{r['label']}: {_cell(r)}")
    body = []
    for device, experts, dense, share in keys:
        cells = {r["label"]: r for r in rows if (r["device"], r["experts"], r["dense"], r["budget"]) == (
            device, experts, dense, share)}
        fast = max(r["fast_bytes"] for r in cells.values())
        body.append([device, f"{experts} / {dense}", f"{share:.0%} ({fast / 1e9:.1f} GB)",
                     *[_cell(cells[x]) if x in cells else "-" for x in labels],
                     f"{cells['spac']['hit_rate']:.0%}" if "spac" in cells else "-"])
    lines.append(table(["device", "experts / dense", "fast budget", *labels, "spac hit rate"], body))
    for (device, experts, dense), cells in resident.items():
        lines.append(f"- {device}, {experts} / {dense}, all experts fast: " + "; ".join(cells))
    return "\n".join(lines)


def main() -> None:
    from spac_ort.bench.simulate import load_records
    from spac_ort.targets.predict import EngineCosts, ModelShape, deployment, memory_need, system_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace-plain", type=Path, default=ROOT / "bench-out" / "sim-trace-k0.jsonl",
                    help="a spac-run --trace file of plain decoding on the reference model")
    ap.add_argument("--trace-spec", type=Path, default=ROOT / "bench-out" / "sim-trace-k4.jsonl",
                    help="a spac-run --trace file with K=4 drafts on the reference model")
    ap.add_argument("--engine", type=Path, default=ROOT / "docs" / "results" / "simulate_check.json",
                    help="the engine's own costs on this machine (a simulate_check result or a system profile)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    ap.add_argument("--devices", default="", help="comma-separated device names to keep (default: all)")
    ap.add_argument("--plain", default="resident",
                    help="comma-separated speculative policies to replay on the plain trace too (label 'K=0')")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "edge_predict.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    shape = ModelShape()
    records = {0: load_records(args.trace_plain, shape.experts), 4: load_records(args.trace_spec, shape.experts)}
    trace_layers = records[0][0].counts.shape[0]
    engine = EngineCosts.load(args.engine, trace_layers)
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        ap.error(f"unknown policy '{unknown[0]}'; choose from {', '.join(POLICIES)}")
    keep = {x for x in args.devices.split(",") if x}
    rows = []
    for device, experts, dense, shares in CONFIGS:
        if not keep or device in keep:
            rows += _config(records, device, experts, dense, shares, policies, engine, shape,
                            set(args.plain.split(",")))
    systems = {f"{device} {experts}/{dense}": asdict(system_profile(deployment(device, experts, dense), shape,
                                                                    trace_layers, engine))
               for device, experts, dense, _ in CONFIGS if not keep or device in keep}
    labels = list(dict.fromkeys(r["label"] for r in rows if not r["label"].startswith("resident")))
    nx_dram = memory_need(deployment("jetson-orin-nx-16gb", "int4"), shape, 0.0, False)
    print("PREDICTED decode tokens/s (from specification-derived cost models; no device was run).")
    print("Cell: with the Python engine's own work (native decode loop's bound in parentheses).\n")
    print(_tables(rows, labels))
    print(f"- jetson-orin-nx-16gb with its int4 experts held in DRAM needs {nx_dram / 1e9:.1f} GB with no fast "
          "slots, more than its 17.2 GB: hence the variant with the experts on NVMe")
    out = {"label": "PREDICTED, not measured", "machine": machine(), "model": asdict(shape),
           "trace_plain": _rel(args.trace_plain), "trace_spec": _rel(args.trace_spec),
           "engine_costs": _rel(args.engine), "orin_nx_dram_int4_memory_bytes": nx_dram,
           "systems_per_trace_layer": systems, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
