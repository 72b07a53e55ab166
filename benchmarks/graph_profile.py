"""Where a bundle's graph sessions spend their time: ONNX Runtime's profiler over greedy
generation, node time summed by operator and provider (e.g. an fp32 bundle against its
fp16 jetson target on CUDA).

    python -m benchmarks.graph_profile --bundle fp32=demo-bundle --bundle fp16=demo-jetson --out profile.json

The profiler synchronises around each node: compare its times with each other, not with
wall time.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import tempfile
from pathlib import Path

from spac_ort.runtime import Generator, sessions

PROMPTS = ("def add(a, b):", "The river")


def profile(bundle: Path, providers: tuple[str, ...], new_tokens: int, top: int) -> dict:
    work = tempfile.mkdtemp(prefix="spac-profile-")
    plain = sessions.session_options

    def profiled(threads=None):  # type: ignore[no-untyped-def]
        options = plain(threads)
        options.enable_profiling = True
        options.profile_file_prefix = f"{work}/graph"
        return options

    sessions.session_options = profiled          # graph sessions (`Piece`) read it when built
    try:
        gen = Generator.from_bundle(bundle, providers=providers)
    finally:
        sessions.session_options = plain
    for p in PROMPTS:
        list(gen.generate(p, max_new_tokens=new_tokens, stop_at_eos=False, speculative=False))
    pieces = gen.report.piece_seconds
    files = [s.end_profiling() for s in gc.get_objects() if isinstance(s, sessions.ort.InferenceSession)]
    gen.close()
    nodes: dict = collections.defaultdict(lambda: [0.0, 0])
    for f in files:
        if not f or not os.path.exists(f):
            continue
        for ev in json.loads(Path(f).read_text()):
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                a = ev.get("args", {})
                key = f"{a.get('op_name')}@{a.get('provider')}"
                nodes[key][0] += ev["dur"] / 1e3
                nodes[key][1] += 1
        os.remove(f)
    ranked = sorted(nodes.items(), key=lambda kv: -kv[1][0])[:top]
    return {"piece_seconds": pieces, "nodes_ms_calls": {k: [round(v[0], 2), v[1]] for k, v in ranked}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", required=True, help="NAME=PATH; repeat for each bundle")
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    providers = (sessions.CUDA, sessions.CPU) if args.provider == "cuda" else (sessions.CPU,)
    result = {}
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        result[name] = profile(Path(path), providers, args.new_tokens, args.top)
        print(name, json.dumps(result[name]["nodes_ms_calls"])[:600], flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
