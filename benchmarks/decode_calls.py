"""Every call of decoding, timed: per piece (embed, attention, observers, experts, head,
draft) and window width, with the lane calls inside the experts and the draft's own calls
apart. Medians say what a call costs; maxima and totals show first calls at new widths.

    python -m benchmarks.decode_calls --bundle SYN_JETSON --policy resident --fast-provider cuda \\
        --fast-quant fp16 --out docs/results/decode_calls_h200_resident.json

Replays the first tape of each domain (`benchmarks.realsize`; the first replay again as an
untimed warm-up), greedy, ``--draft-tokens auto``. A target pass of more than 16 tokens counts
as prefill and is left out; draft feeds are all kept (its prompt feeds show as wide widths).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from .common import machine, table
from .realsize import TAPES, _generator, first_per_domain

PREFILL_FROM = 17        # a target pass this wide or wider is a prompt's prefill


def _instrument(gen, log: list, state: dict) -> None:  # type: ignore[no-untyped-def]
    from spac_ort.runtime.tiers import pools

    bb = gen.backbone
    add = bb.timers.add

    def timed_add(kind: str, seconds: float, calls: int = 1) -> None:
        log.append((state["prefill"], kind, state["t"], seconds))
        add(kind, seconds, calls)
    bb.timers.add = timed_add
    forward = bb.forward

    def timed_forward(ids, cache, last_only=True):  # type: ignore[no-untyped-def]
        state["t"], state["prefill"] = len(ids), len(ids) >= PREFILL_FROM
        return forward(ids, cache, last_only)
    bb.forward = timed_forward
    lane = pools.run_lane

    def timed_lane(session, weights_in, x, index, weights, filler):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = lane(session, weights_in, x, index, weights, filler)
        log.append((state["prefill"], "lane_call", x.shape[1], time.perf_counter() - t0))
        return out
    pools.run_lane = timed_lane
    if gen.draft is not None:
        draft = gen.draft.forward

        def timed_draft(ids, cache):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = draft(ids, cache)
            log.append((False, "draft_call", len(ids), time.perf_counter() - t0))
            return out
        gen.draft.forward = timed_draft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--policy", default="resident")
    ap.add_argument("--fast-provider", default="cpu")
    ap.add_argument("--backbone-provider", default=None, help="default: the fast provider")
    ap.add_argument("--fast-budget", default="17%")
    ap.add_argument("--fast-quant", choices=("same", "fp32", "fp16"), default="same")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--tapes", type=int, default=8, help="first tapes of each domain, at most this many")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from spac_ort.runtime.tape import Replay, load_tapes

    args = argparse.Namespace(backbone_provider=a.backbone_provider or a.fast_provider, fast_provider=a.fast_provider,
                              threads=a.threads, fast_budget=a.fast_budget, calibrate=a.calibrate, link_gbps=0.0,
                              expert_quant="none", fast_quant=a.fast_quant)
    tapes = first_per_domain(load_tapes(TAPES), 1)[: a.tapes]
    gen = _generator(a.bundle, a.policy, args)
    log: list = []
    _instrument(gen, log, {"t": 0, "prefill": True})
    with gen:
        for i, tape in enumerate([tapes[0], *tapes]):
            if i == 1:
                log.clear()                       # the first replay warms up
            Replay(tape, gen.manifest).attach(gen)
            list(gen.generate(list(tape.prompt), max_new_tokens=len(tape.tokens), draft_tokens="auto"))
            print(f"{tape.domain}: {gen.report.tokens_per_second:.0f} tok/s", flush=True)
    groups: dict = defaultdict(list)
    for prefill, name, t, seconds in log:
        if not prefill:
            groups[(name, t)].append(seconds * 1e3)
    rows = [{"piece": name, "T": t, "calls": len(v), "median_ms": statistics.median(v), "mean_ms": statistics.mean(v),
             "max_ms": max(v), "total_ms": sum(v)} for (name, t), v in sorted(groups.items())]
    print(table(["piece", "T", "calls", "median ms", "mean ms", "max ms", "total ms"],
                [[r["piece"], r["T"], r["calls"], r["median_ms"], r["mean_ms"], r["max_ms"], r["total_ms"]]
                 for r in rows]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine(), "bundle": str(a.bundle), "policy": a.policy,
                                 "fast_provider": a.fast_provider, "fast_quant": a.fast_quant, "rows": rows},
                                indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
