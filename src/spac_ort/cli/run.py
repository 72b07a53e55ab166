"""``spac-run BUNDLE_DIR --prompt TEXT``: generate text from a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from .common import Progress, setup_logging, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("--prompt-file", type=click.Path(path_type=Path), help="Read the prompt from this file.")
@click.option("-n", "--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy; > 0 samples.")
@click.option("--top-k", default=0, show_default=True, type=int, help="Sample from the k most likely tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus sampling mass (1 = off).")
@click.option("--seed", type=int, default=None, help="Random seed for sampling.")
@click.option("-k", "--draft-tokens", default=4, show_default=True, type=int,
              help="Draft tokens proposed per speculative step.")
@click.option("--no-speculative", is_flag=True, help="Decode one token per target pass (ignore the draft).")
@click.option("--draft", "draft_dir", type=click.Path(path_type=Path),
              help="Use this optimum ONNX export directory as the draft instead of the bundle's.")
@click.option("--trace", type=click.Path(path_type=Path),
              help="Write a JSONL trace: per target pass, proposed/accepted tokens and per-layer expert counts.")
@click.option("--experts", "experts_backend", type=click.Choice(["grouped", "sessions"]), default="grouped",
              show_default=True, help="Without --policy: run a layer's experts in one ORT call (grouped) or one "
                                      "session per expert (sessions).")
@click.option("--policy", type=click.Choice(["resident", "cpu", "static", "sd-static", "lru", "spac"]),
              help="Expert placement over a fast tier and the CPU (default: every expert resident in its own "
                   "CPU session).")
@click.option("--fast-budget", help="Fast-tier memory for experts: bytes ('2GiB') or a share of all experts "
                                    "('17%'). Default: all experts.")
@click.option("--ram-budget", help="Host memory for expert weights, same units; the rest is read from the bundle "
                                   "on demand. Default: unlimited.")
@click.option("--fast-provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Execution provider of the fast tier (cpu: a second CPU pool stands in for an accelerator).")
@click.option("--utility", type=click.Choice(["fixed", "scaled", "adaptive"]), default="fixed", show_default=True,
              help="spac: utility estimator mode.")
@click.option("--sync-prefetch", is_flag=True, help="spac: prefetch synchronously after each step (no overlap).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path),
              help="Device profile JSON for the balancer's cost model.")
@click.option("--calibrate", "calibrate_out", type=click.Path(path_type=Path),
              help="Measure a device profile for this bundle on this machine, write it as JSON, and exit.")
@click.option("--plan-out", type=click.Path(path_type=Path),
              help="Write the last verify step's plan graph with its critical path (.json or .dot).")
@click.option("--verify", is_flag=True, help="Check every bundle file's sha256 before loading.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (prompt/generated token ids, text, report) instead of streaming.")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True, help="No report on stderr.")
def main(bundle: Path, prompt: Optional[str], prompt_file: Optional[Path], max_new_tokens: int,
         temperature: float, top_k: int, top_p: float, seed: Optional[int], draft_tokens: int,
         no_speculative: bool, draft_dir: Optional[Path], trace: Optional[Path], experts_backend: str,
         policy: Optional[str],
         fast_budget: Optional[str], ram_budget: Optional[str], fast_provider: str, utility: str,
         sync_prefetch: bool,
         profile_path: Optional[Path], calibrate_out: Optional[Path], plan_out: Optional[Path], verify: bool,
         as_json: bool,
         verbose: int, quiet: bool) -> None:
    """Generate text from BUNDLE (written by spac-export). Text streams to stdout, the
    report goes to stderr."""
    setup_logging(verbose, quiet)
    with user_errors():
        from ..errors import ConfigError, PromptError
        from ..runtime import Generator, SamplingConfig

        from ..runtime.sessions import fast_providers

        if calibrate_out is not None:
            from ..runtime.calibrate import calibrate

            profile = calibrate(bundle, fast_providers(fast_provider))
            profile.save(calibrate_out)
            click.echo(f"wrote {calibrate_out}: fast {profile.fast_fixed_s * 1e6:.0f} us + "
                       f"{profile.fast_per_token_s * 1e6:.1f} us/token, cpu {profile.slow_fixed_s * 1e6:.0f} us + "
                       f"{profile.slow_per_token_s * 1e6:.1f} us/token, copies {profile.link_bytes_per_s / 1e9:.1f} GB/s"
                       f" ({profile.name})", err=True)
            return
        if prompt is not None and prompt_file is not None:
            raise ConfigError("pass either --prompt or --prompt-file, not both")
        if prompt_file is not None:
            try:
                prompt = prompt_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PromptError(f"cannot read prompt file {prompt_file} ({exc.__class__.__name__}); "
                                  "pass a readable UTF-8 text file") from None
        if prompt is None:
            raise PromptError("no prompt given; pass --prompt TEXT or --prompt-file FILE")
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        progress = Progress(enabled=not quiet and not as_json)
        try:
            from ..profile import DeviceProfile
            from ..runtime.policies import SpacOptions
            from ..runtime.utility import UtilityConfig

            gen = Generator.from_bundle(
                bundle, verify=verify, draft=draft_dir, progress=progress, policy=policy, fast_budget=fast_budget,
                ram_budget=ram_budget, profile=DeviceProfile.load(profile_path) if profile_path else None,
                fast_providers=fast_providers(fast_provider), experts=experts_backend,
                spac=SpacOptions(utility=UtilityConfig.for_mode(utility)), synchronous_prefetch=sync_prefetch)
        finally:
            progress.close()
        ids = gen.encode(prompt)
        tokens = gen.generate(ids, max_new_tokens=max_new_tokens, sampling=sampling, draft_tokens=draft_tokens,
                              speculative=False if no_speculative else None)
        if trace is not None:
            from ..runtime.sensor import TraceWriter

            try:
                writer = TraceWriter(trace)
            except OSError as exc:
                raise ConfigError(f"cannot write trace file {trace} ({exc.strerror}); choose another --trace path") from None
            gen.step_observers.append(writer)
        try:
            _emit(gen, ids, tokens, as_json, quiet)
        finally:
            if trace is not None:
                writer.close()
            if gen.tiered is not None:
                gen.tiered.close()
        if plan_out is not None:
            plan = gen.tiered.last_plan if gen.tiered else None
            if plan is None:
                raise ConfigError("--plan-out needs a placement policy (--policy); the plain runtime has no plan")
            plan.write(plan_out)


def _emit(gen, ids, tokens, as_json: bool, quiet: bool) -> None:
    """Stream text to stdout and the report to stderr, or print one JSON object."""
    from ..runtime.tokenizer import StreamDecoder

    out: list[int] = []
    if as_json:
        out = list(tokens)
        click.echo(json.dumps({"prompt_token_ids": ids, "generated_token_ids": out,
                               "text": gen.tokenizer.decode(out) if gen.tokenizer else None,
                               "report": gen.report.to_dict()}))
        return
    stream = StreamDecoder(gen.tokenizer) if gen.tokenizer else None
    for token in tokens:
        out.append(token)
        piece = stream.push(token) if stream else f"{token} "
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if not quiet:
        click.echo(gen.report.render(), err=True)
