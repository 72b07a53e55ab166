"""Loading a bundle into the parts a `Generator` runs: the target's backbone over an
expert backend (every expert resident, or placed in tiers by a policy), the tokenizer and
the draft model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..budget import parse_budget
from ..bundle_files import check_present, verify_files
from ..errors import BundleError, ConfigError
from ..manifest import Manifest, load_manifest
from ..naming import Graphs
from .backbone import Backbone
from .fused import FusedBackbone
from .fused_draft import FusedDraft
from .fused_kv import kv_device
from .sessions import provider_options
from .config import TierConfig
from .draft import DraftModel, find_graph
from .experts import ExpertBackend, resident_backend
from .spac.policies import Policy, make_policy
from .tiers.quant import bits_of, fast_bits
from .tiers.tiered import TieredExperts
from .tokenizer import Tokenizer
from . import widths

Progress = Callable[[str, int, int], None]


@dataclass
class Parts:
    bundle: Path
    manifest: Manifest
    backbone: Union[Backbone, FusedBackbone]
    tokenizer: Optional[Tokenizer]
    draft: Optional[Union[DraftModel, FusedDraft]]
    policy: Optional[Policy]


def load(path: Union[str, Path], *, verify: bool, draft: Optional[Union[str, Path]], providers: Sequence[str],
         experts: str, tiers: Optional[TierConfig], progress: Optional[Progress]) -> Parts:
    bundle = Path(path)
    manifest = load_manifest(bundle)
    if verify:
        verify_files(bundle, manifest, (lambda i, n: progress("verify", i, n)) if progress else None)
    else:
        check_present(bundle, manifest)
    policy = None
    if tiers is None and manifest.experts.precision != "fp32":
        tiers = _integer_experts(manifest, experts)
    if tiers is None:
        backend: ExpertBackend = resident_backend(
            experts, bundle, manifest, providers, (lambda i, n: progress("load experts", i, n)) if progress else None)
    else:
        policy = tiers.policy if isinstance(tiers.policy, Policy) else make_policy(tiers.policy, tiers.spac)
        backend = _tiered(bundle, manifest, policy, tiers)
    try:
        with provider_options(target_provider_options(bundle, manifest)):
            backbone = (FusedBackbone if manifest.graphs is Graphs.FUSED else Backbone)(bundle, manifest, backend,
                                                                                        providers)
            device = kv_device(manifest, providers)
            draft_model = _draft(bundle, manifest, draft, providers, device)
            attention = (backbone, draft_model) if device is not None else ()
            _warm([p for p in attention if isinstance(p, (FusedBackbone, FusedDraft))]
                  + ([backend] if getattr(backend, "on_device", False) else []), progress)
        tok = Tokenizer(bundle / manifest.tokenizer) if manifest.tokenizer else None
    except BaseException:
        backend.close()
        raise
    return Parts(bundle, manifest, backbone, tok, draft_model, policy)


def _warm(pieces: list, progress: Optional[Progress]) -> None:
    """What runs on a device (the attention of the layer graphs and the draft, the fast
    tier's lane): every window width a decoding run uses, run once at load
    (`FusedBackbone.warm`, `FusedDraft.warm`, `TieredExperts.warm`; `widths`)."""
    if not pieces:
        return
    for i, piece in enumerate(pieces):
        if progress:
            progress("warm up", i, len(pieces))
        piece.warm(widths.DECODE)
    if progress:
        progress("warm up", len(pieces), len(pieces))


def target_provider_options(bundle: Path, manifest: Manifest) -> dict[str, dict[str, str]]:
    """A deployment bundle's ONNX Runtime provider options (``target.provider_options``:
    {"providers": [[name, {option: value}], ...]}), by provider name; {} without any."""
    rel = None if manifest.target is None else manifest.target.provider_options
    if rel is None:
        return {}
    try:
        entries = json.loads((bundle / rel).read_text(encoding="utf-8"))["providers"]
        options = {str(name): {str(k): str(v) for k, v in opts.items()} for name, opts in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{bundle / rel} is not a provider options file ({type(exc).__name__}: {exc}); rebuild "
                          "the target with spac-export target") from None
    return options


def _integer_experts(manifest: Manifest, experts: str) -> TierConfig:
    """Experts stored as integers run in one QMoE call per layer over a host stack: the
    tiered engine with every expert in its CPU lane (policy ``cpu``)."""
    if experts not in ("auto", "moe"):
        raise ConfigError(f"the bundle stores its experts as {manifest.experts.precision}, which run on the MoE "
                          f"backend only; drop --experts {experts}")
    return TierConfig(policy="cpu", fast_budget=0)


def _budget(value: Union[str, int, None], total: int, what: str) -> Optional[int]:
    if value is None or isinstance(value, int):
        return value
    return parse_budget(value, total, what)


def _tiered(bundle: Path, manifest: Manifest, policy: Policy, tiers: TierConfig) -> TieredExperts:
    total = len(manifest.moe_layers()) * manifest.dims.num_experts * manifest.expert_bytes()
    return TieredExperts(bundle, manifest, policy, _budget(tiers.fast_budget, total, "fast budget"),
                         _budget(tiers.ram_budget, total, "RAM budget"), tiers.fast_providers, tiers.profile,
                         tiers.overlap, tiers.link_bytes_per_s, bits_of(tiers.expert_quant),
                         fast_bits(tiers.fast_quant))


def _draft(bundle: Path, manifest: Manifest, directory: Optional[Union[str, Path]], providers: Sequence[str],
           device: Optional[str]) -> Optional[Union[DraftModel, FusedDraft]]:
    if directory is not None:
        model = DraftModel(find_graph(Path(directory)), providers)
    elif manifest.draft is not None and manifest.draft.graphs is Graphs.FUSED:
        model = FusedDraft(bundle / manifest.session_graph(manifest.draft.graph), manifest.draft, providers, device)
    elif manifest.draft is not None:
        model = DraftModel(bundle / manifest.session_graph(manifest.draft.graph), providers)
    else:
        return None
    if model.shape.vocab_size not in (-1, manifest.dims.vocab_size):
        raise BundleError(f"the draft's vocabulary ({model.shape.vocab_size}) differs from the target's "
                          f"({manifest.dims.vocab_size}); use a draft that shares the target's tokenizer")
    return model
