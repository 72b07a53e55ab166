"""``spac-export [MODEL_DIR] -o BUNDLE_DIR`` and ``spac-export inspect BUNDLE_DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..target_spec import TARGETS
from .common import Group, Progress, setup_logging, user_errors


class _DefaultToExport(Group):
    """``spac-export ARGS`` means ``spac-export export ARGS`` unless ARGS names a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["export", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToExport, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Turn a Hugging Face MoE checkpoint into a spac-ort bundle (see `spac-export export --help`)."""


@main.command("export")
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to create.")
@click.option("--draft", "draft_dir", type=click.Path(path_type=Path),
              help="Dense draft checkpoint for speculative decoding (default with no MODEL_DIR: the demo draft).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--graphs", type=click.Choice(["auto", "fused", "portable"]), default="auto", show_default=True,
              help="fused: ONNX Runtime's fused attention and norm operators with the KV cache updated in place "
                   "(CPU and CUDA providers); portable: standard operators only, for providers without "
                   "ONNX Runtime's contrib operators (NNAPI, CoreML, QNN). auto: fused where the family has them.")
@click.option("--head-quant", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: the lm_head as 8-bit weights (ONNX Runtime's MatMulNBits, fused graphs only): about 4x "
                   "less to read per token; greedy output can differ from fp32's.")
@click.option("--expert-quant", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="Store the experts as 8- or 4-bit integers (symmetric, one scale per row): 0.27x or 0.14x the "
                   "bytes on disk, in memory and per copy. Greedy output can differ from fp32's; the whole-model "
                   "check against transformers is skipped (each expert is checked on what it stores).")
@click.option("--skip-model-check", is_flag=True,
              help="Skip the whole-model parity check against transformers (pieces are still checked).")
@click.option("--synthetic", type=click.Choice(["qwen3-30b-a3b", "tiny"]),
              help="Instead of MODEL_DIR: random weights with this model's dimensions (and a random dense draft "
                   "with its draft's), for measuring speed at real size; drive it with a replay tape.")
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True,
              help="--synthetic: MoE layers of the target.")
@click.option("--draft-layers", type=click.IntRange(min=1), help="--synthetic: layers of the draft (default: in "
              "proportion to --layers, as in the real pair: 28 of 48 for qwen3-30b-a3b, at least 1).")
@click.option("--seed", type=int, default=0, show_default=True, help="--synthetic: random seed of the weights.")
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
def export_cmd(model_dir: Optional[Path], out: Path, draft_dir: Optional[Path], force: bool, graphs: str,
               head_quant: str, expert_quant: str, skip_model_check: bool, synthetic: Optional[str], layers: int,
               draft_layers: Optional[int], seed: int, verbose: int, quiet: bool) -> None:
    """Export MODEL_DIR (default: the embedded demo model) into the bundle -o BUNDLE_DIR.

    Supported: qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2, deepseek_v3. Also: `spac-export inspect BUNDLE_DIR`.
    """
    setup_logging(verbose, quiet)
    with user_errors():
        try:
            from ..export import ExportOptions, export_bundle
        except ImportError as exc:
            from ..errors import MissingDependencyError
            raise MissingDependencyError(
                f"spac-export needs the export extra ({exc.name} is missing); "
                "install it with: pip install 'spac-ort[export]'") from None
        from ..models import DEMO_DRAFT, DEMO_TARGET

        if model_dir is None and synthetic is None:
            model_dir, draft_dir = DEMO_TARGET, draft_dir or DEMO_DRAFT
        progress = Progress(enabled=not quiet)
        from ..errors import ConfigError
        if synthetic is not None and (model_dir is not None or draft_dir is not None):
            raise ConfigError("--synthetic builds its own target and draft; drop MODEL_DIR and --draft")
        if synthetic is not None and expert_quant != "none":
            raise ConfigError("--synthetic writes fp32 experts; quantize them at load time with spac-run "
                              "--expert-quant, or drop --expert-quant")
        try:
            if synthetic is not None:
                from ..export.synthetic import export_synthetic
                result = export_synthetic(synthetic, out, layers, draft_layers, seed, progress, force=force,
                                          graphs=graphs, head_quant=head_quant)
            else:
                result = export_bundle(ExportOptions(model_dir, out, force=force, check_model=not skip_model_check,
                                                     draft_dir=draft_dir, graphs=graphs, head_quant=head_quant,
                                                     expert_quant=expert_quant),
                                       progress)
        finally:
            progress.close()
        if not quiet:
            m = result.manifest
            draft = f", draft {m.draft.model_type}" if m.draft else ", no draft"
            experts = f"{m.dims.num_experts} {m.experts.precision} experts"
            click.echo(f"wrote {result.bundle} ({m.family.value}, {m.graphs.value} graphs, {len(m.moe_layers())} MoE layers x "
                       f"{experts}{draft}) in {result.seconds:.1f} s; max relative error: "
                       f"pieces {result.piece_error:.1e}, model " + (f"{result.model_error:.1e}" if
                       m.experts.precision == "fp32" else "not checked (quantized experts)"), err=True)


@main.command("target")
@click.argument("name", type=click.Choice(TARGETS))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Deployment bundle directory to create.")
@click.option("--draft-tokens", type=int, default=4, show_default=True,
              help="android: K of the verify window; fixed-shape graphs are made for 1 and K + 1 tokens.")
@click.option("--hardware", help="Device whose cost model the bundle ships (default: a Snapdragon 8 Gen 3 "
                                 "class phone for android, Jetson AGX Orin 64GB for jetson).")
@click.option("--precision", type=click.Choice(("fp16", "fp32")),
              help="jetson only: the precision of the session graphs the runtime opens; fp16 (the default): "
                   "weights and arithmetic in fp16, inputs and outputs fp32, the greedy head fp32 (used where "
                   "the head runs on the CPU).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at -o.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def target_cmd(name: str, bundle: Path, out: Path, draft_tokens: int, hardware: Optional[str],
               precision: Optional[str], force: bool, quiet: bool) -> None:
    """Make a deployment bundle for NAME (android or jetson) from BUNDLE: ORT-format and
    fixed-shape graphs, the operators for a reduced onnxruntime build and a usability
    report (android); provider options, a launcher and a systemd unit (jetson); and a
    device profile estimated from the device's specifications (both)."""
    with user_errors():
        from ..targets.build import build_target

        bar = Progress(enabled=not quiet)
        try:
            m = build_target(name, bundle, out, draft_tokens=draft_tokens, hardware=hardware, force=force,
                             progress=bar, precision=precision)
        finally:
            bar.close()
        added = sum(1 for rel in m.files if rel.startswith("target/"))
        click.echo(f"wrote {out} ({name} bundle of {bundle}: {added} files under target/)", err=True)


@main.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also check every file's sha256.")
def inspect_cmd(bundle: Path, verify: bool) -> None:
    """Print a readable summary of BUNDLE."""
    with user_errors():
        from ..summary import summarize
        from ..bundle_files import verify_files
        from ..manifest import load_manifest

        manifest = load_manifest(bundle)
        if verify:
            verify_files(bundle, manifest)
        click.echo(summarize(bundle, manifest))
        if verify:
            click.echo("all files match their sha256")


if __name__ == "__main__":
    main()
