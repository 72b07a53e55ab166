"""Peers: decode tokens/s of llama.cpp, transformers (fp32, torch CPU) and spac-run on the
reference model, the same prompts and thread counts, plain and speculative decoding.

    benchmarks/build_llama_cpp.sh ../peers-build       # once: llama.cpp binaries + f32 GGUF
    python -m benchmarks.peers --prompts 8 --new-tokens 128 --threads 1 2 --repeats 3 \\
        --llama-build ../peers-build --out docs/results/peers.json

What runs (decode tokens/s = tokens after the first over the time after the first, greedy,
EOS ignored):

- llama.cpp, per prompt: ``llama-completion`` (its "eval time" line), and
  ``llama-speculative-simple`` with the draft GGUF and at most ``--draft-tokens`` drafts per
  step (its "decoded" line, which counts the first token too); f32 weights, llama.cpp's
  default f16 KV cache (faster here than f32, and the only kind llama-bench takes).
- llama.cpp, no prompt: ``llama-bench -p 0 -n NEW -r 3`` (tg128 from an empty context).
- transformers: fp32 ``generate``, timed token by token through a streamer.
- spac-run: ``Generator.generate`` on a bundle with a draft, ``report.tokens_per_second``;
  ``--bundle`` takes an existing bundle, else one is exported under ``--work`` (with
  ``--export-option KEY=VALUE`` passed on to ``ExportOptions``). Plain, a fixed K, and its
  default ``--draft-tokens auto`` (drafts from the draft model or the context), which the
  last row sets against llama.cpp's default, plain decoding.

Every (repeat, threads, prompt) runs each engine once, in an order that rotates from prompt
to prompt, so machine noise hits all alike. "spac-run / llama.cpp" is the geometric mean over
those pairs. Prints a markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from benchmarks.common import ROOT, ensure_bundle, load_prompts, machine, model_dirs, table
from spac_ort.runtime import Generator

LLAMA_BENCH_REPEATS = 3
PLAIN, SPECULATIVE = "plain", "speculative"
AUTO = "auto"           # spac-run's default (--draft-tokens auto), set against llama.cpp's default (plain)
LLAMA, BENCH, HF, SPAC = "llama.cpp", "llama-bench", "transformers", "spac-run"


# ---- llama.cpp ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LlamaCpp:
    build: Path

    @property
    def bin(self) -> Path:
        return self.build / "build" / "bin"

    @property
    def target(self) -> Path:
        return self.build / "models" / "target-f32.gguf"

    @property
    def draft(self) -> Path:
        return self.build / "models" / "draft-f32.gguf"

    def check(self) -> None:
        needed = [self.bin / n for n in ("llama-bench", "llama-completion", "llama-speculative-simple")]
        missing = [p for p in [*needed, self.target, self.draft] if not p.is_file()]
        if missing:
            raise SystemExit(f"llama.cpp is not built in {self.build} ({missing[0].name} is missing): "
                             f"run benchmarks/build_llama_cpp.sh {self.build}")

    def version(self) -> str:
        path = self.build / "VERSION"
        return path.read_text().strip().replace("\n", ", ") if path.is_file() else "unknown"

    def _run(self, binary: str, *args: object) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.bin / binary), *map(str, args)], capture_output=True, text=True,
                             errors="replace")
        if out.returncode != 0:
            raise RuntimeError(f"{binary} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return out

    def bench(self, threads: int, new_tokens: int) -> dict:
        out = self._run("llama-bench", "-m", self.target, "-t", threads, "-p", 0, "-n", new_tokens,
                        "-r", LLAMA_BENCH_REPEATS, "-o", "json")
        (result,) = json.loads(out.stdout)
        return {"tokens_per_s": result["avg_ts"], "samples": result["samples_ts"]}

    def plain(self, prompt: str, threads: int, new_tokens: int) -> dict:
        log = self._run("llama-completion", "-m", self.target, "-t", threads, "-p", prompt, "-n", new_tokens,
                        "--temp", 0, "--ignore-eos", "-no-cnv", "--simple-io", "--no-display-prompt").stderr
        (prompt_tokens,) = _numbers(r"prompt eval time = +[\d.]+ ms / +(\d+) tokens", log)
        ms, runs = _numbers(r"\s eval time = +([\d.]+) ms / +(\d+) runs", log)
        return {"tokens_per_s": runs / (ms / 1e3), "prompt_tokens": int(prompt_tokens)}

    def speculative(self, prompt: str, threads: int, new_tokens: int, k: int) -> dict:
        log = self._run("llama-speculative-simple", "-m", self.target, "-md", self.draft, "-t", threads,
                        "-p", prompt, "-n", new_tokens, "--temp", 0, "--ignore-eos", "--spec-type", "draft-simple",
                        "--spec-draft-n-max", k, "--spec-draft-n-min", 0).stderr
        (prompt_tokens,) = _numbers(r"encoded +(\d+) tokens", log)
        (tps,) = _numbers(r"decoded +\d+ tokens in +[\d.]+ seconds, speed: +([\d.]+)", log)
        (drafted,), (accepted,) = _numbers(r"n_drafted += (\d+)", log), _numbers(r"n_accept += (\d+)", log)
        return {"tokens_per_s": tps, "prompt_tokens": int(prompt_tokens),
                "acceptance": accepted / drafted if drafted else 0.0}


def _numbers(pattern: str, log: str) -> list[float]:
    """The groups of pattern's first match in a llama.cpp log, as numbers."""
    m = re.search(pattern, log)
    if m is None:
        raise RuntimeError(f"no match for {pattern!r} in llama.cpp's output")
    return [float(g) for g in m.groups()]


# ---- transformers -------------------------------------------------------------------------
class _TokenClock(BaseStreamer):
    """perf_counter() at every put: the prompt first, then each new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class Transformers:
    def __init__(self, model_dir: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def plain(self, prompt: str, threads: int, new_tokens: int) -> dict:
        torch.set_num_threads(threads)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        clock = _TokenClock()
        with torch.no_grad():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=clock)
        first, last = clock.times[1], clock.times[-1]
        return {"tokens_per_s": (len(clock.times) - 2) / (last - first), "prompt_tokens": ids.shape[1]}


# ---- spac-run -----------------------------------------------------------------------------
class SpacRun:
    """One Generator per thread count."""

    def __init__(self, bundle: Path, threads: list[int]):
        self.bundle = bundle
        self.gens = {n: Generator.from_bundle(bundle, threads=n) for n in threads}

    def run(self, prompt: str, threads: int, new_tokens: int, k: Union[int, str]) -> dict:
        gen = self.gens[threads]
        spec = ({"draft_tokens": "auto"} if k == AUTO else {"speculative": True, "draft_tokens": k} if k
                else {"speculative": False})
        list(gen.generate(prompt, max_new_tokens=new_tokens, stop_at_eos=False, **spec))
        r = gen.report
        return {"tokens_per_s": r.tokens_per_second, "prompt_tokens": r.prompt_tokens,
                **({"acceptance": r.acceptance_rate} if k else {})}


def prepare_bundle(bundle: Optional[Path], work: Path, options: dict[str, str]) -> Path:
    """``--bundle`` as given, else the reference bundle with its draft under ``work`` (one per
    set of export options)."""
    if bundle is not None:
        return bundle
    if not options:
        return ensure_bundle("ref", work, draft=True)
    from spac_ort.export import ExportOptions, export_bundle

    out = work / "-".join(["ref-bundle", *(f"{k}-{v}" for k, v in sorted(options.items()))])
    if not (out / "spac-manifest.json").is_file():
        target, draft = model_dirs("ref")
        export_bundle(ExportOptions(target, out, force=True, draft_dir=draft, **options))
    return out


# ---- the run ------------------------------------------------------------------------------
Case = tuple[str, str, Callable[[], dict]]      # engine, mode, measurement


def cases(prompt: str, threads: int, args: argparse.Namespace, llama: LlamaCpp, hf: Transformers,
          spac: SpacRun) -> list[Case]:
    n, k = args.new_tokens, args.draft_tokens
    out: list[Case] = [
        (LLAMA, PLAIN, lambda: llama.plain(prompt, threads, n)),
        (LLAMA, SPECULATIVE, lambda: llama.speculative(prompt, threads, n, k)),
        (HF, PLAIN, lambda: hf.plain(prompt, threads, n)),
        (SPAC, PLAIN, lambda: spac.run(prompt, threads, n, 0)),
        (SPAC, SPECULATIVE, lambda: spac.run(prompt, threads, n, k)),
        (SPAC, AUTO, lambda: spac.run(prompt, threads, n, AUTO)),
    ]
    return out


def measure(prompts: list[dict], args: argparse.Namespace, llama: LlamaCpp, hf: Transformers,
            spac: SpacRun) -> list[dict]:
    for threads in args.threads:          # warm-up: first in-process calls pay for allocations
        for engine, _, run in cases(prompts[0]["prompt"], threads, args, llama, hf, spac):
            if engine != LLAMA:           # a process per call: nothing carries over
                run()
    runs = []
    for repeat in range(args.repeats):
        for threads in args.threads:
            runs.append({"engine": BENCH, "mode": PLAIN, "threads": threads, "repeat": repeat, "prompt": None,
                         **llama.bench(threads, args.new_tokens)})
            for i, p in enumerate(prompts):
                todo = cases(p["prompt"], threads, args, llama, hf, spac)
                shift = (i + repeat) % len(todo)
                for engine, mode, run in todo[shift:] + todo[:shift]:
                    runs.append({"engine": engine, "mode": mode, "threads": threads, "repeat": repeat,
                                 "prompt": p["id"], **run()})
            print(f"repeat {repeat + 1}/{args.repeats}, {threads} thread(s) done", flush=True)
    return runs


def summarise(runs: list[dict], threads: list[int]) -> list[dict]:
    """Median tokens/s per (mode, threads, engine) and spac-run's paired ratio to llama.cpp."""
    rows = []
    for mode in (PLAIN, SPECULATIVE, AUTO):
        for n in threads:
            mine = [r for r in runs if r["threads"] == n and (r["mode"] == mode or (
                mode == AUTO and r["mode"] == PLAIN and r["engine"] != SPAC))]     # auto: against plain llama.cpp
            row: dict = {"mode": mode, "threads": n}
            for engine in (LLAMA, BENCH, HF, SPAC):
                tps = [r["tokens_per_s"] for r in mine if r["engine"] == engine]
                row[engine] = statistics.median(tps) if tps else None
                acc = [r["acceptance"] for r in mine if r["engine"] == engine and "acceptance" in r]
                if acc:
                    row[f"{engine} acceptance"] = statistics.fmean(acc)
            row["spac-run / llama.cpp"] = paired_ratio(mine)
            rows.append(row)
    return rows


def paired_ratio(runs: list[dict]) -> Optional[float]:
    """Geometric mean over (repeat, prompt) of spac-run's tokens/s over llama.cpp's."""
    base = {(r["repeat"], r["prompt"]): r["tokens_per_s"] for r in runs if r["engine"] == LLAMA}
    logs = [math.log(r["tokens_per_s"] / base[(r["repeat"], r["prompt"])]) for r in runs if r["engine"] == SPAC]
    return math.exp(statistics.fmean(logs)) if logs else None


def render(rows: list[dict], k: int) -> str:
    def cell(v: Optional[float], fmt: str = "{:.0f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    def acceptance(row: dict) -> str:
        if row["mode"] != SPECULATIVE:
            return ""
        return " / ".join(cell(row.get(f"{e} acceptance"), "{:.0%}") for e in (LLAMA, SPAC))

    label = {PLAIN: PLAIN, SPECULATIVE: f"speculative K={k}", AUTO: "spac-run auto / llama.cpp plain"}
    body = [[label[row["mode"]], row["threads"], cell(row[LLAMA]),
             cell(row[BENCH]) if row["mode"] != SPECULATIVE else "",
             cell(row[HF]) if row["mode"] != SPECULATIVE else "",
             cell(row[SPAC]), cell(row["spac-run / llama.cpp"], "{:.2f}x"), acceptance(row)] for row in rows]
    return table(["decoding", "threads", "llama.cpp tok/s", "llama-bench tg tok/s", "transformers tok/s",
                  "spac-run tok/s", "spac-run / llama.cpp", "acceptance llama.cpp / spac-run"], body)


def pick_prompts(n: int) -> list[dict]:
    """n prompts spread over the domains."""
    domains = len({p["domain"] for p in load_prompts()})
    pool = load_prompts(per_domain=-(-n // domains))
    return pool[:: max(1, len(pool) // n)][:n]


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--export-option {pair!r}: expected KEY=VALUE")
        options[key.replace("-", "_")] = value
    return options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts, spread over the domains")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draft-tokens", type=int, default=4, help="draft tokens per step when speculating")
    ap.add_argument("--llama-build", type=Path, default=ROOT.parent / "peers-build",
                    help="the directory benchmarks/build_llama_cpp.sh built")
    ap.add_argument("--bundle", type=Path, help="an existing spac-ort bundle with a draft (else one is exported)")
    ap.add_argument("--export-option", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to ExportOptions when exporting the bundle (repeatable)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out", help="where the bundle is exported")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "peers.json")
    args = ap.parse_args()
    llama = LlamaCpp(args.llama_build.resolve())
    llama.check()
    options = parse_options(args.export_option)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = prepare_bundle(args.bundle, args.work, options)
    prompts = pick_prompts(args.prompts)
    hf = Transformers(model_dirs("ref")[0])
    spac = SpacRun(bundle, args.threads)
    load = [os.getloadavg()[0]]          # other work on the machine skews runs with more threads most
    runs = measure(prompts, args, llama, hf, spac)
    load.append(os.getloadavg()[0])
    rows = summarise(runs, args.threads)
    print(f"\n{len(prompts)} prompts x {args.new_tokens} new tokens, {args.repeats} repeats; llama.cpp "
          f"{llama.version()}; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after (this run included)")
    graphs = json.loads((bundle / "spac-manifest.json").read_text()).get("graphs", "portable")
    print(f"spac-run: {bundle} ({graphs} graphs)")
    text = render(rows, args.draft_tokens) + (
        f"\n\nllama.cpp: llama-completion per prompt (plain), llama-speculative-simple per prompt (speculative); "
        f"llama-bench: tg{args.new_tokens} from an empty context. Medians; the ratio is paired per prompt and repeat.")
    print(text)
    result = {"machine": machine(), "load_average": load,
              "llama_cpp": {"build": str(llama.build), "version": llama.version()},
              "bundle": str(bundle), "bundle_graphs": graphs, "export_options": options,
              "prompts": [p["id"] for p in prompts], "new_tokens": args.new_tokens, "repeats": args.repeats,
              "threads": args.threads, "draft_tokens": args.draft_tokens, "summary": rows, "runs": runs,
              "table": text}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
