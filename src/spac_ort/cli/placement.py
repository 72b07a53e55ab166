"""Options that load a bundle into a `Generator` (backend, policy, budgets, providers,
speculation, threads), shared by ``spac-run`` and ``spac-serve``.

    @click.command()
    @placement_options
    def main(bundle, **options):
        gen = load_generator(bundle, progress=True, **options)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from ..runtime.experts import BACKENDS
from ..runtime.providers import PROVIDERS
from ..runtime.sessions import FAST_PROVIDERS
from ..runtime.spac.policies import POLICIES
from ..runtime.spac.utility import UtilityMode
from .common import Progress


class DraftTokens(click.ParamType):
    """``--draft-tokens``: a number or ``auto``. Anything else is passed on unchanged, and the
    generator rejects it with a one-line `ConfigError`."""

    name = "INTEGER|auto"

    def get_metavar(self, param, ctx=None):  # type: ignore[no-untyped-def]
        return "[INTEGER|auto]"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            return int(text)
        except ValueError:
            return str(value)


_OPTIONS = [
    click.option("-k", "--draft-tokens", default="auto", show_default=True, type=DraftTokens(),
                 help="Draft tokens proposed per speculative step, or 'auto': pick K before every step from the "
                      "measured acceptance and draft/verify times, down to plain decoding where drafting does not "
                      "pay."),
    click.option("--no-speculative", is_flag=True, help="Decode one token per target pass (ignore the draft)."),
    click.option("--no-lookup", is_flag=True,
                 help="With --draft-tokens auto: draft with the draft model only, never from the context (the "
                      "tokens that followed an earlier occurrence of the last three)."),
    click.option("--draft", "draft_dir", type=click.Path(path_type=Path),
                 help="Use this optimum ONNX export directory as the draft instead of the bundle's."),
    click.option("--experts", "experts_backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                 help="Without --policy: run a layer's experts in one com.microsoft.MoE call (moe), one call of "
                      "standard operators (grouped) or one session per expert (sessions); auto: moe for bundles "
                      "with fused graphs, else grouped."),
    click.option("--policy", type=click.Choice(list(POLICIES)),
                 help="Expert placement over a fast tier and the CPU (default: every expert resident on the CPU, "
                      "see --experts)."),
    click.option("--fast-budget", help="Fast-tier memory for experts: bytes ('2GiB') or a share of all experts "
                                       "('17%'). Default: all experts."),
    click.option("--ram-budget", help="Host memory for expert weights, same units; the rest is read from the "
                                      "bundle on demand. Default: unlimited."),
    click.option("--expert-quant", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
                 help="With --policy: hold experts on both tiers as 8- or 4-bit integers (one scale per output "
                      "row; com.microsoft.QMoE), so a fast budget holds 4x or 7x as many."),
    click.option("--fast-quant", type=click.Choice(["same", "fp32", "fp16", "int8", "int4"]), default="same",
                 show_default=True,
                 help="With --policy: the fast tier's precision apart from the CPU lane's (same: --expert-quant's), "
                      "e.g. --expert-quant int4 --fast-quant fp16 (half the bytes of fp32 per slot). Integer "
                      "slots on CUDA run gathered: each call dequantizes the experts it runs to fp16."),
    click.option("--provider", type=click.Choice(list(PROVIDERS)), default="cpu", show_default=True,
                 help="Execution provider of the graphs outside the experts (embed, attention, router, head, "
                      "draft), the CPU provider taking what it does not; one this onnxruntime lacks is an error."),
    click.option("--fast-provider", type=click.Choice(FAST_PROVIDERS), default="cpu", show_default=True,
                 help="Execution provider of the fast tier (cpu: a second CPU pool stands in for an "
                      "accelerator)."),
    click.option("--utility", type=click.Choice([m.value for m in UtilityMode]), default="fixed",
                 show_default=True, help="spac: utility estimator mode."),
    click.option("--overlap", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                 help="Copies to the fast tier and the fast lane beside the decode thread (on) or inline (off); "
                      "auto: on with an accelerator, off with the CPU stand-in."),
    click.option("--profile", "profile_path", type=click.Path(path_type=Path),
                 help="Device profile JSON for the balancer's cost model."),
    click.option("--verify", is_flag=True, help="Check every bundle file's sha256 before loading."),
    click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Intra-op threads of each ONNX Runtime session."),
]

# the options above that only choose how tokens are drafted, not how the bundle loads
DECODE_OPTIONS = ("draft_tokens", "no_speculative", "no_lookup")


def placement_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the loading options to a click command (in the order of ``--help``)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def load_generator(bundle: Path, *, progress: bool, policy: Optional[str], profile_path: Optional[Path],
                   fast_provider: str, utility: str, fast_budget: Optional[str], ram_budget: Optional[str],
                   overlap: str, experts_backend: str, draft_dir: Optional[Path], verify: bool,
                   threads: int, expert_quant: str = "none", provider: str = "cpu",
                   fast_quant: str = "same"):  # type: ignore[no-untyped-def]
    """A `Generator` for BUNDLE with the placement options' values (a progress bar on stderr
    while it loads, when ``progress``)."""
    from ..errors import ConfigError
    from ..profile import DeviceProfile
    from ..runtime import Generator
    from ..runtime.config import TierConfig
    from ..runtime.providers import session_providers
    from ..runtime.sessions import fast_providers
    from ..runtime.spac.policies import SpacOptions
    from ..runtime.spac.utility import UtilityConfig

    providers = session_providers(provider)
    tiers = None
    if policy is not None:
        tiers = TierConfig(policy, fast_budget, ram_budget, fast_providers(fast_provider),
                           DeviceProfile.load(profile_path) if profile_path else None,
                           SpacOptions(utility=UtilityConfig.for_mode(utility)),
                           None if overlap == "auto" else overlap == "on",
                           expert_quant=None if expert_quant == "none" else expert_quant,
                           fast_quant=None if fast_quant == "same" else fast_quant)
    elif fast_budget is not None or ram_budget is not None:
        raise ConfigError("memory budgets need a placement policy; pass --policy (e.g. spac)")
    elif expert_quant != "none" or fast_quant != "same":
        raise ConfigError("quantized experts live in the tiers; pass --policy (e.g. spac or cpu)")
    bar = Progress(enabled=progress)
    try:
        return Generator.from_bundle(bundle, progress=bar, tiers=tiers, verify=verify, draft=draft_dir,
                                     experts=experts_backend, threads=threads, providers=providers)
    finally:
        bar.close()
