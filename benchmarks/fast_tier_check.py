"""Check the fast tier on a real accelerator: every policy with its fast tier on the given
provider must give the plain runtime's greedy tokens; prints the tier report and times.

    python -m benchmarks.fast_tier_check BUNDLE --fast-provider cuda --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spac_ort.runtime import Generator
from spac_ort.runtime.config import TierConfig
from spac_ort.runtime.sessions import fast_providers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--fast-provider", default="cuda")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    prompts = [[0, 17, 923, 4000, 51, 7], [0, 3987, 570, 1088, 12, 99, 5, 6000]]
    plain_gen = Generator.from_bundle(args.bundle)
    plain = [list(plain_gen.generate(p, max_new_tokens=args.new_tokens)) for p in prompts]
    rows = []
    for policy, budget in [("resident", None), ("lru", "25%"), ("sd-static", "50%"), ("spac", "25%")]:
        tiers = TierConfig(policy, budget, fast_providers=fast_providers(args.fast_provider))
        with Generator.from_bundle(args.bundle, tiers=tiers) as gen:
            t0 = time.perf_counter()
            outs = [list(gen.generate(p, max_new_tokens=args.new_tokens)) for p in prompts]
            seconds = time.perf_counter() - t0
        t = gen.report.tiers
        rows.append({"policy": policy, "budget": budget, "identical": outs == plain,
                     "first_divergence": next((i for a, b in zip(outs, plain) for i, (x, y) in enumerate(zip(a, b))
                                               if x != y), None),
                     "fast_tier": t["fast_tier"], "hit_rate": t["hit_rate"], "fast_share": t["fast_share"],
                     "bytes_to_fast_per_token": t["bytes_to_fast_per_token"], "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
