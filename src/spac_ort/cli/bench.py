"""``spac-bench BUNDLE_DIR``: placement policies x fast budgets x K on the same prompts, in
one process; a table, JSON and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ..errors import ConfigError
from ..runtime.sessions import FAST_PROVIDERS
from .common import (Command, Progress, closed_stdout_ends_quietly, setup_logging, sigterm_as_exception,
                     user_errors, writable_path)

_POLICIES = "none,cpu,static,lru,sd-static,spac,resident"


def _ks(text: str) -> list:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "auto":
            out.append("auto")
            continue
        try:
            k = int(part)
        except ValueError:
            k = -1
        if k < 0:
            raise ConfigError(f"draft tokens '{part}' is neither a number >= 0 nor auto; pass e.g. -k 0,2,4,auto "
                              "(0: plain decoding)")
        out.append(k)
    return out


def _items(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _quants(text: str) -> list[str]:
    """--fast-quant's precisions, each checked (one-line error for an unknown one)."""
    from ..runtime.tiers.quant import fast_bits

    quants = list(dict.fromkeys(_items(text))) or ["same"]
    for q in quants:
        fast_bits(q)
    return quants


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--policies", default=_POLICIES, show_default=True,
              help="Comma-separated placement policies; 'none' runs without tiers (every expert on the CPU).")
@click.option("--budgets", default="17%", show_default=True,
              help="Comma-separated fast budgets ('17%', '2GiB'); policies none and resident ignore them.")
@click.option("-k", "--draft-tokens", "ks", default="4", show_default=True,
              help="Comma-separated K values (numbers, 0 for plain decoding, or auto); cpu, static and lru "
                   "always decode plainly.")
@click.option("--prompts", "prompts_path", type=click.Path(path_type=Path),
              help="JSON-lines file, one {\"prompt\": ..., \"domain\": ...} per line (default: 8 built-in "
                   "prompts, one per kind of text).")
@click.option("--tapes", type=click.Path(path_type=Path),
              help="Replay tapes (.jsonl.gz): their prompts, routing and draft agreement drive the run "
                   "(for synthetic bundles); each run must reproduce its tape.")
@click.option("--per-domain", type=click.IntRange(min=1), help="Only the first N prompts (or tapes) of each domain.")
@click.option("-n", "--new-tokens", default=64, show_default=True, type=click.IntRange(min=2),
              help="Tokens generated per prompt (EOS ignored, so every cell makes the same number).")
@click.option("--fast-provider", type=click.Choice(FAST_PROVIDERS), default="cpu", show_default=True,
              help="Execution provider of the fast tier (cpu: a second CPU pool stands in for an accelerator).")
@click.option("--backbone-provider", type=click.Choice(FAST_PROVIDERS), default="cpu", show_default=True,
              help="Providers offered the embed, layer, head and draft graphs.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads of each ONNX Runtime session.")
@click.option("--expert-quant", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="Experts of the tiered policies held as 8- or 4-bit integers.")
@click.option("--fast-quant", default="same", show_default=True,
              help="The fast tier's expert precision apart from --expert-quant's (as spac-run's: same, fp32, fp16, "
                   "int8, int4); comma-separated, several make the precision a grid axis (e.g. fp16,int8,int4 "
                   "under one budget), each calibrated apart with --calibrate.")
@click.option("--link-gbps", type=click.FloatRange(min=0, min_open=True),
              help="EMULATE a slower host-to-fast-tier link: every copy takes at least bytes / rate (GB/s), "
                   "and a calibrated profile plans with that rate.")
@click.option("--calibrate", is_flag=True, help="Measure the balancer's device profile on this machine first.")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path),
              help="Device profile JSON for the balancer (default: the CPU stand-in's).")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="A spac-run --trace file: the routing and windows --simulate and --measure-system use.")
@click.option("--measure-system", "system_out", type=click.Path(path_type=Path),
              help="Measure this machine's system profile for --simulate (with --trace) into this file, and stop.")
@click.option("--simulate", "system_in", type=click.Path(path_type=Path),
              help="PREDICT tokens/s per policy and budget from --trace and this system profile, without running "
                   "the model.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("spac-bench-out"),
              show_default=True, help="Directory for bench.json and the plots.")
@click.option("--interleave", is_flag=True,
              help="Hold every generator at once and run each prompt through all cells in a rotating order "
                   "(fairer ratios on a noisy machine; needs memory for all of them).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (they need matplotlib: the bench extra).")
@click.option("-v", "--verbose", count=True, help="More messages on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, only errors on stderr.")
def main(bundle: Path, policies: str, budgets: str, ks: str, prompts_path: Optional[Path], tapes: Optional[Path],
         per_domain: Optional[int], new_tokens: int, fast_provider: str, backbone_provider: str, threads: int,
         expert_quant: str, fast_quant: str, link_gbps: Optional[float], calibrate: bool, trace_path: Optional[Path],
         system_out: Optional[Path], system_in: Optional[Path], interleave: bool, profile_path: Optional[Path], out_dir: Path, no_plots: bool, verbose: int,
         quiet: bool) -> None:
    """Run every placement policy, fast budget and draft length K on the same prompts in one
    process, after one warm-up per generator. Prints a table per domain with tokens/s,
    speedups over every baseline at the same budget and K, accepted tokens per window,
    hit rate, the share of expert work on the fast tier and bytes copied per token; writes
    OUT/bench.json (per-layer expert time included) and PNG plots."""
    setup_logging(verbose, quiet)
    with user_errors(), sigterm_as_exception(), closed_stdout_ends_quietly():
        from ..bench.grid import grid, load_prompts, summarise, to_json
        from ..bench.runner import default_prompts, run_grid, tape_prompts
        from ..profile import DeviceProfile
        from ..runtime.sessions import fast_providers

        quants = _quants(fast_quant)
        cells = grid(_items(policies), _items(budgets), _ks(ks), quants if len(quants) > 1 else (None,))
        if system_in is not None or system_out is not None:
            return _simulation(bundle, trace_path, system_in, system_out, _items(policies), _items(budgets),
                               prompts_path, (fast_provider, backbone_provider), profile_path, out_dir)
        if prompts_path is not None and tapes is not None:
            raise ConfigError("--prompts and --tapes both name the prompts; pass one of them")
        if tapes is not None:
            from ..runtime.tape import load_tapes
            prompts = tape_prompts(load_tapes(tapes), per_domain)
        else:
            plain = (load_prompts(prompts_path, per_domain, new_tokens) if prompts_path is not None
                     else default_prompts(new_tokens))
            prompts = [(p, None) for p in plain]
        if calibrate and profile_path is not None:
            raise ConfigError("--calibrate measures a profile and --profile loads one; pass one of them")
        out_dir.mkdir(parents=True, exist_ok=True)
        fast, backbone = fast_providers(fast_provider), fast_providers(backbone_provider)
        profile = DeviceProfile.load(profile_path) if profile_path is not None else None
        link = None if link_gbps is None else link_gbps * 1e9
        if calibrate:
            from ..runtime.calibrate import calibrate_for_run
            measured = {q: calibrate_for_run(bundle, fast, threads, link, fast_quant=q) for q in quants}
            profile = measured if len(quants) > 1 else measured[quants[0]]
        bar = Progress(enabled=not quiet)
        try:
            results = run_grid(bundle, cells, prompts, fast_provider=fast, backbone=backbone, threads=threads,
                               profile=profile, link_bytes_per_s=link, progress=bar,
                               expert_quant=(expert_quant, quants[0]), interleave=interleave)
        finally:
            bar.close()
        rows = summarise(results)
        _report(rows, out_dir, no_plots)
        meta = {"bundle": str(bundle), "fast_provider": fast_provider, "backbone_provider": backbone_provider,
                "threads": threads, "new_tokens": new_tokens, "prompts": len(prompts), "link_gbps_emulated": link_gbps,
                "expert_quant": expert_quant, "fast_quant": fast_quant, "interleave": interleave,
                "profile": (None if profile is None else {q: vars(p) for q, p in profile.items()}
                            if isinstance(profile, dict) else vars(profile))}
        (out_dir / "bench.json").write_text(json.dumps(to_json(rows, results, meta), indent=1) + "\n",
                                            encoding="utf-8")
        click.echo(f"wrote {out_dir / 'bench.json'}", err=True)


def _simulation(bundle: Path, trace: Optional[Path], system_in: Optional[Path], system_out: Optional[Path],
                policies: list, budgets: list, prompts_path: Optional[Path], provider_names: tuple[str, str],
                profile_path: Optional[Path], out_dir: Path) -> None:
    from ..bench.grid import load_prompts
    from ..bench.runner import default_prompts
    from ..bench.simulate import SystemProfile, measure_system_file, predict_grid
    from ..profile import DeviceProfile
    from ..runtime.calibrate import calibrate
    from ..runtime.sessions import fast_providers

    if trace is None:
        raise ConfigError("--simulate and --measure-system need --trace (record one with spac-run --trace FILE)")
    if system_in is not None and system_out is not None:
        raise ConfigError("--simulate reads a system profile and --measure-system writes one; pass one of them")
    if system_out is not None:
        writable_path(system_out, "--measure-system")
        fast_provider = provider_names[0]
        providers = (fast_providers(fast_provider), fast_providers(provider_names[1]))
        device = (DeviceProfile.load(profile_path) if profile_path is not None
                  else calibrate(bundle, providers[0], repeats=20))
        texts = [p.text for p in (load_prompts(prompts_path, 1, 48) if prompts_path else default_prompts(48))]
        traces = {p: trace for p in dict.fromkeys(["cpu", *policies])}
        measure_system_file(bundle, traces, device, fast_provider != "cpu", texts, budgets[0],
                            providers).save(system_out)
        click.echo(f"wrote {system_out}", err=True)
        return
    rows = predict_grid(bundle, trace, SystemProfile.load(system_in), policies, budgets)
    click.echo("PREDICTED from the trace and the system profile (no model was run):")
    click.echo("| policy | budget | predicted tok/s | predicted hit rate |")
    click.echo("|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['policy']} | {r['budget'] or '-'} | {_rate(r['tokens_per_s'])} | {r['hit_rate']:.1%} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "simulated.json").write_text(json.dumps({"trace": str(trace), "system": str(system_in), "rows": rows},
                                                       indent=1) + "\n", encoding="utf-8")
    click.echo(f"wrote {out_dir / 'simulated.json'}", err=True)


def _rate(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _report(rows: list, out_dir: Path, no_plots: bool) -> None:
    from ..bench.grid import ALL, render, row_cell

    click.echo(render(rows))
    domains = sorted({r["domain"] for r in rows if r["domain"] != ALL})
    if len(domains) > 1:
        click.echo("\ntokens/s per domain:")
        cells = list(dict.fromkeys(row_cell(r) for r in rows))
        rate = {(row_cell(r), r["domain"]): r["tokens_per_s"] for r in rows}
        click.echo("| cell | " + " | ".join(domains) + " |")
        click.echo("|---|" + "---|" * len(domains))
        for c in cells:
            click.echo(f"| {c.label} | " + " | ".join(_rate(rate.get((c, d))) for d in domains) + " |")
    if no_plots:
        return
    try:
        from ..bench.plots import write_plots
        made = write_plots(rows, out_dir)
    except ImportError:
        click.echo("plots skipped: matplotlib is not installed (pip install 'spac-ort[bench]')", err=True)
        return
    for path in made:
        click.echo(f"wrote {path}", err=True)
