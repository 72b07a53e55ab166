"""Check an expert stack on the CUDA provider against the same stack in host memory, and
time its writes and lane calls (real-size dimensions by default).

    python -m benchmarks.cuda_stack_check --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spac_ort.runtime.calibrate import median_time
from spac_ort.runtime.sessions import CPU, CUDA
from spac_ort.runtime.tiers.pinned import PinnedCopier
from spac_ort.runtime.tiers.pools import ExpertStack, interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--slots", type=int, default=43)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    h, i, n, k = args.hidden, args.inter, args.slots, args.top_k
    rng = np.random.default_rng(0)
    copier = PinnedCopier.create()
    t0 = time.perf_counter()
    gpu = ExpertStack(n, h, i, (CUDA, CPU), copier=copier)
    setup = time.perf_counter() - t0
    pageable = ExpertStack(2, h, i, (CUDA, CPU))
    cpu = ExpertStack(n, h, i)
    experts = [interleaved(*((rng.standard_normal(s) * 0.02).astype(np.float32) for s in ((h, i), (h, i), (i, h))))
               for _ in range(4)]
    for e in range(n):
        w = experts[e % len(experts)]
        gpu.write(e, *w)
        cpu.write(e, *w)
    back = [np.array_equal(a, b) for a, b in zip(gpu.weights(n - 1), cpu.weights(n - 1))]
    same = experts[3 % len(experts)]                  # entry 3 keeps its expert: the lane checks below use it
    pinned = [copier.pinned(a.shape) for a in same] if copier else same
    for p, a in zip(pinned, same):
        p[...] = a
    write_s = median_time(lambda: gpu.write(3, *pinned), 20)
    pageable_s = median_time(lambda: pageable.write(1, *same), 20)
    rows = {}
    for t in (1, 2, 5):
        x = rng.standard_normal((1, t, h)).astype(np.float32)
        index = np.stack([rng.choice(n, k, replace=False) for _ in range(t)])
        index[0, : k // 2] = -1                                   # row 0: half its experts elsewhere
        w = rng.random((t, k)).astype(np.float32)
        got, want = gpu.run(x, index, w), cpu.run(x, index, w)
        per_row = (np.abs(got - want).max(axis=2) / (np.abs(want).max() + 1e-12))[0].tolist()
        full = np.stack([rng.choice(n, k, replace=False) for _ in range(t)])      # no fillers
        full_err = float(np.abs(gpu.run(x, full, w) - cpu.run(x, full, w)).max() / (np.abs(want).max() + 1e-12))
        rows[t] = {"rel_err_per_row": per_row, "rel_err_no_fillers": full_err,
                   "gpu_ms": 1e3 * median_time(lambda: gpu.run(x, index, w), 20),
                   "cpu_ms": 1e3 * median_time(lambda: cpu.run(x, index, w), 5)}
    nbytes = sum(a.nbytes for a in experts[0])
    result = {"dims": vars(args) | {"out": None}, "setup_s": setup, "read_back_equal": back,
              "pinned_copier": copier is not None, "write_ms": 1e3 * write_s, "write_gb_per_s": nbytes / write_s / 1e9,
              "pageable_write_gb_per_s": nbytes / pageable_s / 1e9, "lane": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
