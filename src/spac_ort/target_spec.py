"""The manifest's ``target`` section: what a deployment bundle (``spac-export target``)
adds to the bundle it was made from.

    "target": {
      "name": "android",                        # or "jetson"
      "graphs": {"embed.onnx": "target/ort/embed.ort", ...},   # the session graphs the runtime opens instead
      "fixed_tokens": [1, 5],                   # token counts of the fixed-shape variants under target/fixed/
      "providers": ["NnapiExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"],
      "profile": "target/device-profile.json",  # the balancer's cost model on the target device
      "provider_options": "target/providers.json"   # per provider, ONNX Runtime options the runtime passes
    }

Every path is bundle-relative, confined, and listed in ``files`` (so ``--verify`` covers
it). The base bundle's own graphs stay, so the bundle runs anywhere the base one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import manifest_checks as checks
from .fields import Reader

TARGETS = ("android", "jetson")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    graphs: dict[str, str] = field(default_factory=dict)     # base session graph -> its replacement
    fixed_tokens: tuple[int, ...] = ()
    providers: tuple[str, ...] = ()
    profile: Optional[str] = None
    provider_options: Optional[str] = None

    @property
    def half_precision(self) -> bool:
        """Its session graphs are fp16 (a jetson bundle built with ``--precision fp16``)."""
        return self.name == "jetson" and bool(self.graphs)

    def graph(self, rel: str) -> str:
        """The file the runtime opens for the session graph ``rel``."""
        return self.graphs.get(rel, rel)


def parse_target(r: Reader, files: dict[str, Any]) -> Optional[TargetSpec]:
    """The ``target`` section, or None when the bundle has none."""
    if r.get("target", dict, optional=True) is None:
        return None
    tr = r.sub("target")
    name = tr.get("name", str)
    if name not in TARGETS:
        raise tr.fail("name", f"is '{name}'; targets are {', '.join(TARGETS)}")
    graphs_r = tr.sub("graphs")
    graphs = {}
    for base in graphs_r.data:
        rel = graphs_r.get(base, str)
        for path in (base, rel):
            checks.check_path(graphs_r, base, path)
            checks.check_listed(graphs_r, base, path, files)
        graphs[base] = rel
    tokens = tr.get("fixed_tokens", list)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tokens):
        raise tr.fail("fixed_tokens", "must be a list of token counts >= 1")
    providers = tr.get("providers", list)
    if not all(isinstance(p, str) for p in providers):
        raise tr.fail("providers", "must be a list of execution provider names")
    paths = {}
    for key in ("profile", "provider_options"):
        paths[key] = tr.get(key, str, optional=True)
        if paths[key] is not None:
            checks.check_path(tr, key, paths[key])
            checks.check_listed(tr, key, paths[key], files)
    return TargetSpec(name, graphs, tuple(tokens), tuple(providers), paths["profile"], paths["provider_options"])
