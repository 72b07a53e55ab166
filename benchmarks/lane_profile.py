"""Where a tiered MoE layer's time goes: replays tapes through a policy with timers around
the engine's pieces, and times lane calls over stacks of different sizes alone.

    python -m benchmarks.lane_profile --bundle /tmp/syn --fast-provider cuda --backbone-provider cuda \\
        --policies none resident --overlap auto off --out result.json

Per (policy, overlap): ms per window, and per MoE layer pass the medians (us) of the whole
`run_layer`, the wait for the fast lane, the fast lane's wall time on its thread, the MoE
call itself (`run_with_iobinding`), building the lane's logits, and copying the output back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .common import table
from .realsize import TAPES, _generator


class Timers:
    """Timers around functions; ``lane=True`` marks the calls inside which ORT's session
    runs and output copies count as the lane's (``only_in_lane=True``)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.local = threading.local()
        self.restore: list = []

    def wrap(self, owner, name: str, label: str, lane: bool = False, only_in_lane: bool = False) -> None:  # type: ignore[no-untyped-def]
        fn = getattr(owner, name)
        samples, local = self.samples[label], self.local

        def timed(*a, **k):  # type: ignore[no-untyped-def]
            if only_in_lane and not getattr(local, "lane", False):
                return fn(*a, **k)
            local.lane = lane or getattr(local, "lane", False)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                samples.append(time.perf_counter() - t0)
                if lane:
                    local.lane = False

        setattr(owner, name, timed)
        self.restore.append((owner, name, fn))

    def undo(self) -> None:
        for owner, name, fn in reversed(self.restore):
            setattr(owner, name, fn)
        self.restore = []

    def stats_us(self) -> dict[str, dict[str, float]]:
        """Per timer: mean, median, 90th percentile (us) and total (ms)."""
        out = {}
        for k, v in self.samples.items():
            if v:
                q = sorted(v)
                out[k] = {"mean": statistics.mean(v) * 1e6, "median": statistics.median(v) * 1e6,
                          "p90": q[int(0.9 * (len(q) - 1))] * 1e6, "total_ms": sum(v) * 1e3, "n": len(v)}
        return out


def _instrument(timers: Timers) -> None:
    import onnxruntime as ort

    from spac_ort.runtime.tiers import pools, tiered

    timers.wrap(tiered.TieredExperts, "run_layer", "run_layer")
    timers.wrap(tiered.TieredExperts, "_slow_lane", "slow_lane")
    timers.wrap(tiered.TieredExperts, "_run_lanes", "lanes")
    timers.wrap(pools.ExpertStack, "run", "lane_call", lane=True)
    by_shape = timers.samples
    run = pools.ExpertStack.run

    def shaped(self, x, index, weights):  # type: ignore[no-untyped-def]
        k = max(1, int((index >= 0).sum(axis=1).max()))
        t0 = time.perf_counter()
        try:
            return run(self, x, index, weights)
        finally:
            by_shape[f"lane n={self.n} T={x.shape[1]} k={k}"].append(time.perf_counter() - t0)

    timers.restore.append((pools.ExpertStack, "run", run))
    pools.ExpertStack.run = shaped
    timers.wrap(ort.InferenceSession, "run_with_iobinding", "lane_ort_run", only_in_lane=True)
    timers.wrap(ort.SessionIOBinding, "copy_outputs_to_cpu", "lane_copy_out", only_in_lane=True)
    timers.wrap(tiered, "lane_index", "lane_index")


def _replay(bundle: Path, policy: str, overlap, tapes: list, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    from spac_ort.runtime.tape import Replay

    gen = _generator(bundle, policy, args, overlap)
    timers = Timers()
    passes = tokens = 0
    seconds = 0.0
    pieces: dict = defaultdict(float)
    with gen:
        for i, tape in enumerate([tapes[0], *tapes]):
            if i == 1:
                _instrument(timers)
            Replay(tape, gen.manifest).attach(gen)
            out = list(gen.generate(list(tape.prompt), max_new_tokens=len(tape.tokens), draft_tokens=args.draft_tokens))
            if i == 0:
                continue
            r = gen.report
            passes += r.target_steps
            tokens += r.new_tokens - 1
            seconds += r.decode_seconds
            for k, v in r.piece_seconds.items():
                pieces[k] += v
            assert out == list(tape.tokens), "a replay did not reproduce its tape"
        timers.undo()
    stats = timers.stats_us()
    return {"policy": policy, "overlap": overlap, "tokens_per_s": tokens / seconds, "target_passes": passes,
            "ms_per_pass": {k: v * 1e3 / passes for k, v in sorted(pieces.items(), key=lambda kv: -kv[1])},
            "us": {k: s["median"] for k, s in stats.items()}, "stats_us": stats}


def _stack_sizes(args: argparse.Namespace) -> list[dict]:
    """Lane calls over stacks of 43, 128 and 256 entries alone (8 experts chosen per token)."""
    from spac_ort.runtime.calibrate import median_time
    from spac_ort.runtime.sessions import fast_providers
    from spac_ort.runtime.tiers.pools import ExpertStack

    rng = np.random.default_rng(0)
    rows = []
    for n in args.stack_sizes:
        stack = ExpertStack(n, args.hidden, args.inter, fast_providers(args.fast_provider))
        for t in (1, 5):
            for chosen in (8, 3):                        # experts of a token in this lane (the rest: -1)
                x = rng.standard_normal((1, t, args.hidden)).astype(np.float32)
                index = np.stack([rng.choice(n, 8, replace=False) for _ in range(t)])
                index[:, chosen:] = -1
                w = rng.random((t, 8)).astype(np.float32)
                stack.run(x, index, w)
                rows.append({"entries": n, "tokens": t, "chosen": chosen,
                             "us": median_time(lambda: stack.run(x, index, w), 30) * 1e6})

    return rows


def _us(v):  # type: ignore[no-untyped-def]
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    from spac_ort.runtime.tape import load_tapes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--tapes", type=Path, default=TAPES)
    ap.add_argument("--domains", nargs="+", default=["german", "python_code"])
    ap.add_argument("--policies", nargs="+", default=["none", "resident"])
    ap.add_argument("--overlap", nargs="+", default=["auto"], choices=["auto", "on", "off"])
    ap.add_argument("--fast-provider", default="cpu")
    ap.add_argument("--backbone-provider", default="cpu")
    ap.add_argument("--fast-budget", default="17%")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--stack-sizes", type=int, nargs="*", default=[43, 128, 256])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--out", type=Path)
    ap.set_defaults(calibrate=False, link_gbps=0.0)          # realsize's generator options: the stand-in profile
    args = ap.parse_args()
    picked: dict = {}
    for t in load_tapes(args.tapes):
        if t.domain in args.domains and t.domain not in picked:
            picked[t.domain] = t
    tapes = [picked[d] for d in args.domains if d in picked]
    rows = []
    for policy in args.policies:
        for ov in (["auto"] if policy == "none" else args.overlap):
            overlap = {"auto": None, "on": True, "off": False}[ov]
            rows.append(_replay(args.bundle, policy, overlap, tapes, args))
            print(f"{policy} overlap={ov}: {rows[-1]['tokens_per_s']:.1f} tok/s", flush=True)
    keys = ["run_layer", "lanes", "lane_call", "lane_ort_run", "lane_copy_out", "slow_lane", "lane_index"]
    print(table(["policy", "overlap", "tok/s", *[f"{k} us" for k in keys]],
                [[r["policy"], r["overlap"], r["tokens_per_s"], *[_us(r["us"].get(k)) for k in keys]] for r in rows]))
    for r in rows:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_pass"].items())
        print(f"{r['policy']} overlap={r['overlap']}: ms per target pass: {split}")
        for name, st in sorted(r["stats_us"].items()):
            if st["n"] >= 5:
                print(f"    {name}: n {st['n']}, mean {st['mean']:.0f} us, median {st['median']:.0f}, "
                      f"p90 {st['p90']:.0f}, total {st['total_ms']:.1f} ms")
    from spac_ort.runtime.sessions import session_threads

    with session_threads(args.threads):
        sizes = _stack_sizes(args) if args.stack_sizes else []
    if sizes:
        print(table(["stack entries", "tokens", "experts per token", "lane call us"],
                    [[s["entries"], s["tokens"], s["chosen"], _us(s["us"])] for s in sizes]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"replays": rows, "stack_sizes": sizes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
