"""Shared fixtures: exported bundles of the demo and reference models, tiny random models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFMODEL = Path(os.environ.get("SPAC_REFMODEL", SHARED / "refmodel"))
PROMPTS = REFMODEL / "prompts.jsonl"


def _need_refmodel() -> None:
    if not (REFMODEL / "target" / "config.json").is_file():
        pytest.skip(f"reference model not found at {REFMODEL} (set SPAC_REFMODEL to its directory)")


def load_prompts() -> list[dict]:
    if not PROMPTS.is_file():
        pytest.skip(f"benchmark prompts not found at {PROMPTS} (set SPAC_REFMODEL to the reference model directory)")
    return [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def spread(prompts: list[dict], per_domain: int) -> list[dict]:
    """The first ``per_domain`` prompts of every domain."""
    picked: dict[str, list[dict]] = {}
    for p in prompts:
        picked.setdefault(p["domain"], [])
        if len(picked[p["domain"]]) < per_domain:
            picked[p["domain"]].append(p)
    return [p for group in picked.values() for p in group]


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    from spac_ort.export import ExportOptions, export_bundle
    from spac_ort.models import DEMO_DRAFT, DEMO_TARGET

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(ExportOptions(DEMO_TARGET, out, draft_dir=DEMO_DRAFT))
    return out


@pytest.fixture(scope="session")
def refmodel() -> Path:
    _need_refmodel()
    return REFMODEL


@pytest.fixture(scope="session")
def ref_bundle(tmp_path_factory, refmodel) -> Path:
    from spac_ort.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("ref") / "bundle"
    export_bundle(ExportOptions(refmodel / "target", out, draft_dir=refmodel / "draft"))
    return out
