"""ONNX Runtime's own profiles of a generator's sessions (draft, heads, first layer graph,
embed, fast-tier lanes): per session the median run, and each operator's time and provider.

    python -m benchmarks.session_profiles --bundle SYN_JETSON --provider cuda --fast-quant fp16 \\
        --out docs/results/session_profiles_h200.json

Policy resident, the first ``--tapes`` tapes replayed (`benchmarks.realsize`), prefill
included. The median run is decoding's; operator times are means over every run, so a
session's first calls at new widths (prefill, 40-150 ms) weigh in them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from .common import machine
from .realsize import TAPES, _generator


def _profiling(directory: str) -> None:
    """Every session made from now on writes a profile into ``directory``."""
    from spac_ort.runtime import sessions
    from spac_ort.runtime.tiers import pools

    made = sessions.session_options
    count = [0]

    def options(threads=None):  # type: ignore[no-untyped-def]
        so = made(threads)
        count[0] += 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(directory, f"s{count[0]}")
        return so
    sessions.session_options = options
    pools.session_options = options


def _summary(path: str) -> dict:
    events = json.loads(Path(path).read_text())
    runs = sorted(e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    ops: dict = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f"{e['args'].get('op_name')}@{(e['args'].get('provider') or '').replace('ExecutionProvider', '')}"
            ops[key][0] += 1
            ops[key][1] += e["dur"]
    n = max(1, len(runs))
    top = sorted(((op, c / n, us / n) for op, (c, us) in ops.items()), key=lambda r: -r[2])
    return {"runs": len(runs), "median_run_us": runs[len(runs) // 2] if runs else 0,
            "node_us_per_run": sum(r[2] for r in top), "top": top[:14]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--provider", default="cuda")
    ap.add_argument("--fast-quant", choices=("same", "fp32", "fp16"), default="same")
    ap.add_argument("--tapes", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from spac_ort.runtime.tape import Replay, load_tapes

    directory = tempfile.mkdtemp(prefix="spac-profiles-")
    _profiling(directory)
    args = argparse.Namespace(backbone_provider=a.provider, fast_provider=a.provider, threads=8, fast_budget="17%",
                              calibrate=False, link_gbps=0.0, expert_quant="none", fast_quant=a.fast_quant)
    gen = _generator(a.bundle, "resident", args)
    bb = gen.backbone
    with gen:
        for tape in load_tapes(TAPES)[: a.tapes]:
            Replay(tape, gen.manifest).attach(gen)
            list(gen.generate(list(tape.prompt), max_new_tokens=len(tape.tokens), draft_tokens="auto"))
        named = {"draft": gen.draft.piece.session if gen.draft is not None else None,
                 "head_greedy": bb.final_greedy.session if bb.final_greedy is not None else None,
                 "head": bb.final.session, "layer0": bb.layers[0].session, "embed": bb.embed.session,
                 **{f"lane_k{k}": s for k, s in gen.experts.fast._sessions.items()}}
        files = {name: s.end_profiling() for name, s in named.items() if s is not None}
    summary = {name: _summary(path) for name, path in files.items()}
    for name, s in summary.items():
        print(f"== {name}: {s['runs']} runs, median run {s['median_run_us']} us, operators {s['node_us_per_run']:.0f} us/run")
        for op, calls, us in s["top"]:
            print(f"   {op:45s} {calls:6.1f}/run {us:9.1f} us/run")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine(), "bundle": str(a.bundle), "sessions": summary}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
