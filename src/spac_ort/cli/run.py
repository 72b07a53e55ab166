"""``spac-run BUNDLE_DIR --prompt TEXT``: generate text from a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from .common import Command, closed_stdout_ends_quietly, setup_logging, sigterm_as_exception, user_errors, writable_path
from .placement import DECODE_OPTIONS, load_generator, placement_options


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("--prompt-file", type=click.Path(path_type=Path), help="Read the prompt from this file.")
@click.option("-n", "--max-new-tokens", default=128, show_default=True, type=int,
              help="Stop after this many new tokens (or at an end-of-sequence token).")
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy; > 0 samples.")
@click.option("--top-k", default=0, show_default=True, type=int, help="Sample from the k most likely tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus sampling mass (1 = off).")
@click.option("--seed", type=int, default=None, help="Random seed for sampling (a non-negative integer).")
@placement_options
@click.option("--trace", type=click.Path(path_type=Path),
              help="Write a JSONL trace: per target pass, proposed/accepted tokens and per-layer expert counts.")
@click.option("--calibrate", "calibrate_out", type=click.Path(path_type=Path),
              help="Measure a device profile for this bundle on this machine, write it as JSON, and exit.")
@click.option("--plan-out", type=click.Path(path_type=Path),
              help="With --policy: write the last verify (or decode) step's plan graph with its critical path "
                   "(.json or .dot).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (prompt/generated token ids, text, report) instead of streaming.")
@click.option("-v", "--verbose", count=True, help="More messages on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="No report on stderr.")
def main(bundle: Path, prompt: Optional[str], prompt_file: Optional[Path], max_new_tokens: int,
         temperature: float, top_k: int, top_p: float, seed: Optional[int], trace: Optional[Path],
         calibrate_out: Optional[Path], plan_out: Optional[Path], as_json: bool, verbose: int, quiet: bool,
         **placement) -> None:
    """Generate text from BUNDLE (written by spac-export). Text streams to stdout, the
    report goes to stderr."""
    setup_logging(verbose, quiet)
    with user_errors(), sigterm_as_exception(), closed_stdout_ends_quietly():
        from ..errors import ConfigError
        from ..runtime import SamplingConfig

        for path, option in ((trace, "--trace"), (plan_out, "--plan-out"), (calibrate_out, "--calibrate")):
            writable_path(path, option)
        if calibrate_out is not None:
            return _calibrate(bundle, placement["fast_provider"], calibrate_out, placement["fast_quant"])
        if plan_out is not None and placement["policy"] is None:
            raise ConfigError("--plan-out needs a placement policy (--policy); the plain runtime has no plan")
        if plan_out is not None and plan_out.suffix not in (".json", ".dot"):
            raise ConfigError(f"--plan-out {plan_out} must end in .json or .dot")
        text = _read_prompt(prompt, prompt_file)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        draft_tokens, no_speculative, no_lookup = (placement.pop(name) for name in DECODE_OPTIONS)
        gen = load_generator(bundle, progress=not quiet and not as_json, **placement)
        with gen:
            ids = gen.encode(text)
            tokens = gen.generate(ids, max_new_tokens=max_new_tokens, sampling=sampling, draft_tokens=draft_tokens,
                                  speculative=False if no_speculative else None, lookup=not no_lookup)
            writer = _trace_writer(trace)
            if writer is not None:
                gen.step_observers.append(writer)
            try:
                _emit(gen, ids, tokens, as_json, quiet)
            finally:
                if writer is not None:
                    writer.close()
            if plan_out is not None:
                gen.experts.plan.write(plan_out)


def _calibrate(bundle: Path, fast_provider: str, out: Path, fast_quant: str) -> None:
    from ..runtime.calibrate import calibrate
    from ..runtime.sessions import fast_providers

    profile = calibrate(bundle, fast_providers(fast_provider), fast_quant=fast_quant)
    profile.save(out)
    click.echo(f"wrote {out}: fast {profile.fast_fixed_s * 1e6:.0f} us + "
               f"{profile.fast_per_token_s * 1e6:.1f} us/token, cpu {profile.slow_fixed_s * 1e6:.0f} us + "
               f"{profile.slow_per_token_s * 1e6:.1f} us/token, copies {profile.link_bytes_per_s / 1e9:.1f} GB/s"
               f" ({profile.name})", err=True)


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    from ..errors import ConfigError, PromptError

    if prompt is not None and prompt_file is not None:
        raise ConfigError("pass either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            return prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(f"cannot read prompt file {prompt_file} ({exc.__class__.__name__}); "
                              "pass a readable UTF-8 text file") from None
    if prompt is None:
        raise PromptError("no prompt given; pass --prompt TEXT or --prompt-file FILE")
    return prompt


def _trace_writer(path: Optional[Path]):  # type: ignore[no-untyped-def]
    from ..errors import ConfigError
    from ..runtime.sensor import TraceWriter

    if path is None:
        return None
    try:
        return TraceWriter(path)
    except OSError as exc:
        raise ConfigError(f"cannot write trace file {path} ({exc.strerror}); choose another --trace path") from None


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


if __name__ == "__main__":
    main()
