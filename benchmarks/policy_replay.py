"""Placement policies replayed over the tapes' routing, without ORT: hit rate and copies
per token, in milliseconds of CPU for any budget, K and estimator.

Each tape (`benchmarks/data/ref_tapes.jsonl.gz`) becomes the passes a greedy run with a
fixed K makes: the prefill over the prompt, then windows of K+1 positions, each accepting
the run of positions whose draft bit agrees (at most K), routed as the tape says (tape
layers mapped onto ``--layers`` as a replay maps them). `spac.replay` places every pass
under the slot table's rules; copies are counted as the tier counts them: on demand (in a
layer's critical path) or prefetched (beside the draft). As `benchmarks.realsize` runs
them, the tapes pass through one process, the first tape once more before them (its
warm-up, not counted): the slots a prompt leaves are the next prompt's start, and a
prompt's prefill counts with its decoding. "expert ms/token" charges each
layer by ``--profile`` (a realsize JSON's calibrated profile): the two lanes at once, an
on-demand copy at the link's rate, a prefetch nothing (it overlaps drafting), so it is
the cost model's view, not a measurement.

    python -m benchmarks.policy_replay --slots 43 87 --k 2 4 \\
        --profile docs/results/realsize_h200_synj_fp16_43slots_draft1.json --out docs/results/policy_replay.json

``--slot-precision int8|int4`` counts a copy's bytes at that precision (85 or 170 slots
hold the bytes of 43 fp16 ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from .common import table
from .realsize import TAPES, first_per_domain

EXPERTS, TOP_K, HIDDEN, INTER = 128, 8, 2048, 768      # the synthetic model's routing shape and expert size
PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}


def windows(tape, layers: int, k: int) -> list:  # type: ignore[no-untyped-def]
    """The StepRecords of a greedy run of ``tape`` with K = ``k`` drafts per window."""
    from spac_ort.runtime.sensor import StepRecord

    taped = tape.ids.shape[0]
    source = [i * taped // layers for i in range(layers)]

    def counts(pos: np.ndarray) -> np.ndarray:
        c = np.zeros((layers, EXPERTS), np.int64)
        for layer, src in enumerate(source):
            np.add.at(c[layer], tape.ids[src, pos % tape.ids.shape[1]].reshape(-1), 1)
        return c

    n, total = len(tape.prompt), len(tape.sequence)
    records = [StepRecord(0, "prefill", n, (), 0, (), counts(np.arange(n)), {}, {})]
    p = n + 1                                   # the prefill emitted position n
    while p < total:
        accepted = 0
        while accepted < k and p + accepted < total and tape.agree[p + accepted - n]:
            accepted += 1
        records.append(StepRecord(len(records), "verify", k + 1, (0,) * k, accepted, (0,) * (accepted + 1),
                                  counts(np.arange(p - 1, p + k)), {}, {}))
        p += accepted + 1
    return records


def policies() -> dict:
    from spac_ort.runtime.spac.policies import Spac, SpacOptions, make_policy
    from spac_ort.runtime.spac.utility import UtilityConfig

    return {"lru": make_policy("lru"), "spac (fixed)": Spac(),
            "spac (scaled)": Spac(SpacOptions(utility=UtilityConfig.for_mode("scaled"))),
            "spac (adaptive)": Spac(SpacOptions(utility=UtilityConfig.for_mode("adaptive"))),
            "spac (last window)": Spac(SpacOptions(estimator=False))}


def run(tapes: list, layers: int, slots: int, k: int, profile, expert_bytes: int) -> list[dict]:  # type: ignore[no-untyped-def]
    from spac_ort.runtime.spac.policies import TierView
    from spac_ort.runtime.spac.replay import replay

    view = TierView(tuple(range(layers)), layers, EXPERTS, TOP_K, slots, expert_bytes, profile, True)
    warmup = windows(tapes[0], layers, k)             # the warm-up tape's passes come first, not counted
    warm = len(warmup)
    records = [dataclasses.replace(r, step=i) for i, r in
               enumerate([*warmup, *(r for t in tapes for r in windows(t, layers, k))])]
    tokens = sum(len(t.tokens) - 1 for t in tapes)    # the last window may run past the tape: not counted
    rows = []
    for name, policy in policies().items():
        before, s = replay(policy, view, records[:warm]), replay(policy, view, records)   # deterministic
        on_demand = s.fetches_on_demand - before.fetches_on_demand
        prefetched = s.fetches_prefetch - before.fetches_prefetch
        seconds = sum(sec for r, sec in zip(records[warm:], s.step_seconds[warm:]) if r.kind != "prefill")
        rows.append({"policy": name, "slots": slots, "k": k,
                     "hit_rate": (s.pairs_hit - before.pairs_hit) / (s.pairs - before.pairs),
                     "on_demand_per_token": on_demand / tokens, "prefetched_per_token": prefetched / tokens,
                     "mb_per_token": (on_demand + prefetched) * expert_bytes / tokens / 1e6,
                     "expert_ms_per_token": 1e3 * seconds / tokens})   # decoding: prefills are not charged
    return rows


def main() -> None:
    from spac_ort.profile import DeviceProfile
    from spac_ort.runtime.tape import load_tapes
    from spac_ort.runtime.tiers.quant import ExpertLayout
    from spac_ort.runtime.tiers.tiered import CPU_STAND_IN

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tapes", type=Path, default=TAPES)
    ap.add_argument("--per-domain", type=int, default=0, help="only the first N tapes of each domain (0: all)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--slots", type=int, nargs="+", default=[43, 87])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--slot-precision", choices=sorted(PRECISIONS), default="fp16", help="a copy's bytes")
    ap.add_argument("--profile", type=Path, help="a realsize JSON whose calibrated profile charges the passes")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    tapes = load_tapes(args.tapes)
    tapes = first_per_domain(tapes, args.per_domain) if args.per_domain else tapes
    profile = (DeviceProfile(**json.loads(args.profile.read_text())["profile"]) if args.profile else CPU_STAND_IN)
    expert_bytes = ExpertLayout(HIDDEN, INTER, PRECISIONS[args.slot_precision]).nbytes
    rows = [row for slots in args.slots for k in args.k
            for row in run(tapes, args.layers, slots, k, profile, expert_bytes)]
    print(table(["policy", "slots", "K", "hit rate", "on-demand copies/token", "prefetches/token", "MB/token",
                 "expert ms/token (model)"],
                [[r["policy"], r["slots"], r["k"], f"{r['hit_rate']:.1%}", f"{r['on_demand_per_token']:.2f}",
                  f"{r['prefetched_per_token']:.2f}", f"{r['mb_per_token']:.1f}", f"{r['expert_ms_per_token']:.2f}"]
                 for r in rows]))
    args.out.write_text(json.dumps({"tapes": len(tapes), "layers": args.layers, "profile": profile.name,
                                    "slot_precision": args.slot_precision, "expert_bytes": expert_bytes,
                                    "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
