"""Helpers shared by the benchmark scripts: prompts, models, tables."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
REFMODEL = Path(os.environ.get("SPAC_REFMODEL", ROOT.parent / "shared" / "refmodel"))


def load_prompts(per_domain: int | None = None) -> list[dict]:
    path = REFMODEL / "prompts.jsonl"
    if not path.is_file():
        raise SystemExit(f"prompts not found at {path}; set SPAC_REFMODEL to the reference model directory")
    prompts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if per_domain is None:
        return prompts
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        if seen.get(p["domain"], 0) < per_domain:
            seen[p["domain"]] = seen.get(p["domain"], 0) + 1
            out.append(p)
    return out


def model_dirs(name: str) -> tuple[Path, Path]:
    """(target, draft) checkpoint directories of 'demo' or 'ref'."""
    if name == "demo":
        from spac_ort.models import DEMO_DRAFT, DEMO_TARGET
        return DEMO_TARGET, DEMO_DRAFT
    if name == "ref":
        return REFMODEL / "target", REFMODEL / "draft"
    raise SystemExit(f"unknown model {name}; use demo or ref")


def ensure_bundle(name: str, out_root: Path, draft: bool = False) -> Path:
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.manifest import load_manifest

    from spac_ort.errors import ManifestError

    bundle = out_root / f"{name}-bundle"
    if (bundle / "spac-manifest.json").is_file():
        try:
            manifest = load_manifest(bundle)
            if not draft or manifest.draft:
                return bundle
        except ManifestError:      # written by an older spac-ort: export again
            pass
    target, draft_dir = model_dirs(name)
    export_bundle(ExportOptions(target, bundle, force=True, draft_dir=draft_dir if draft else None))
    return bundle


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def table(headers: list[str], rows: Iterable[list]) -> str:
    rows = [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
