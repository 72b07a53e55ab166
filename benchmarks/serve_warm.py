"""One warm `spac-serve` against a fresh `spac-run` process per prompt.

The same prompts (``--per-domain`` of each domain of the reference model's held-out set),
greedy, the same policy and fast budget. Requests alternate: prompt i to the server, then
prompt i as its own process, so both see the same machine load. Per request: the expert
hit rate and decode tokens/s the runtime reports, and the client's wall time (the process's
includes loading the bundle). Prints a table and writes JSON.

    python -m benchmarks.serve_warm --per-domain 4 --max-tokens 64 --policy spac --fast-budget 17%
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .common import ROOT, ensure_bundle, load_prompts, machine, table


def _start(bundle: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "spac_ort.cli.serve", str(bundle), "--port", "0", "-q", *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"http://([\d.]+:\d+)", line)
    if not match:
        raise SystemExit(f"spac-serve did not start: {line}{proc.stderr.read()}")
    return proc, f"http://{match.group(1)}"


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


def _served(url: str, model: str, prompt: str, n: int) -> dict:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                       "return_token_ids": True}).encode()
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req).read())
    wall = time.perf_counter() - t0
    m = _metrics(url)
    return {"wall_s": wall, "hit_rate": m.get("spac_hit_rate_last", 0.0),
            "tokens_per_s": m["spac_tokens_per_second_last"], "tokens": reply["choices"][0]["token_ids"]}


def _process(bundle: Path, options: list[str], prompt: str, n: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "spac_ort.cli.run", str(bundle), "-p", prompt, "-n", str(n), "--json",
                          *options], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    d = json.loads(out.stdout)
    report = d["report"]
    return {"wall_s": wall, "hit_rate": (report["tiers"] or {}).get("hit_rate", 0.0),
            "tokens_per_s": report["tokens_per_second"], "tokens": d["generated_token_ids"]}


def _summary(rows: list[dict]) -> dict:
    quarter = max(1, len(rows) // 4)
    return {"hit_rate": statistics.mean(r["hit_rate"] for r in rows),
            "hit_rate_first_quarter": statistics.mean(r["hit_rate"] for r in rows[:quarter]),
            "hit_rate_last_quarter": statistics.mean(r["hit_rate"] for r in rows[-quarter:]),
            "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rows),
            "wall_s_total": sum(r["wall_s"] for r in rows),
            "wall_s_median": statistics.median(r["wall_s"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-domain", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--policy", default="spac")
    ap.add_argument("--fast-budget", default="17%")
    ap.add_argument("--bundles", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "serve_warm.json")
    args = ap.parse_args()
    bundle = ensure_bundle("ref", args.bundles, draft=True)
    prompts = load_prompts(args.per_domain)
    options = ["--policy", args.policy, "--fast-budget", args.fast_budget]
    proc, url = _start(bundle, options)
    served, fresh = [], []
    try:
        for i, p in enumerate(prompts):
            served.append(_served(url, bundle.name, p["prompt"], args.max_tokens))
            fresh.append(_process(bundle, options, p["prompt"], args.max_tokens))
            print(f"\r{i + 1}/{len(prompts)} prompts", end="", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    print(file=sys.stderr)
    same = sum(a["tokens"] == b["tokens"] for a, b in zip(served, fresh))
    result = {"machine": machine(), "prompts": len(prompts), "max_tokens": args.max_tokens, "policy": args.policy,
              "fast_budget": args.fast_budget, "identical_outputs": same,
              "server": _summary(served), "processes": _summary(fresh),
              "per_request": [{"domain": p["domain"], "server": {k: v for k, v in s.items() if k != "tokens"},
                               "process": {k: v for k, v in f.items() if k != "tokens"}}
                              for p, s, f in zip(prompts, served, fresh)]}
    rows = [[name, f"{s['hit_rate']:.1%}", f"{s['hit_rate_first_quarter']:.1%}", f"{s['hit_rate_last_quarter']:.1%}",
             s["tokens_per_s_median"], s["wall_s_median"], s["wall_s_total"]]
            for name, s in (("one spac-serve", result["server"]), ("a spac-run per prompt", result["processes"]))]
    print(table(["mode", "hit rate", "first quarter", "last quarter", "decode tok/s (median)", "wall s (median)",
                 "wall s (total)"], rows))
    print(f"identical greedy outputs: {same} of {len(prompts)}")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
