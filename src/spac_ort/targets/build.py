"""`build_target`: a deployment bundle from a bundle (``spac-export target NAME BUNDLE -o OUT``).

The new bundle holds a copy of every file of the base bundle, and under ``target/`` what
the target adds (`android.add` / `jetson.add`); its manifest lists the new files with
their sha256 and gains a ``target`` section (`target_spec`). Like an export it is written to a temp directory beside OUT and renamed
into place when complete: no half-written bundle, no replacing one without ``--force``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from .. import naming
from ..bundle_files import check_present
from ..errors import ConfigError
from ..manifest import FileEntry, Manifest, load_manifest, sha256_file
from ..target_spec import TARGETS, TargetSpec
from . import android, jetson
from .hardware import DEFAULT_FOR_TARGET, HARDWARE
from .work import Progress, TargetBuild


PRECISIONS = ("fp16", "fp32")


def build_target(name: str, bundle: Path, out: Path, *, draft_tokens: int = 4, hardware: Optional[str] = None,
                 force: bool = False, progress: Optional[Progress] = None,
                 precision: Optional[str] = None) -> Manifest:
    """Build the ``name`` deployment bundle of ``bundle`` at ``out``; returns its manifest.
    ``precision``: of the session graphs, jetson only (fp16, the default, or fp32)."""
    from ..export.install import check_target, install, make_temp_dir, open_modes, remove_stale_partials
    from ..export.interrupt import DeferredInterrupt

    if name not in TARGETS:
        raise ConfigError(f"unknown target '{name}'; use one of {', '.join(TARGETS)}")
    if draft_tokens < 1:
        raise ConfigError(f"--draft-tokens {draft_tokens} must be at least 1 (the verify window is K + 1 tokens)")
    if precision is not None and (precision not in PRECISIONS or name != "jetson"):
        raise ConfigError(f"--precision {precision}: only jetson bundles take it, as fp16 or fp32; "
                          "android bundles keep the base bundle's fp32 graphs")
    spec = DEFAULT_FOR_TARGET[name] if hardware is None else HARDWARE.get(hardware)
    if spec is None:
        raise ConfigError(f"unknown hardware '{hardware}'; use one of {', '.join(HARDWARE)}")
    manifest = load_manifest(bundle)
    if manifest.target is not None:
        raise ConfigError(f"{bundle} is already a {manifest.target.name} bundle; build targets from the bundle "
                          "spac-export wrote")
    check_present(bundle, manifest)
    if Path(out).resolve() == Path(bundle).resolve():
        raise ConfigError("the target bundle cannot replace its base bundle; pass another -o")
    check_target(out, force)
    remove_stale_partials(out)
    with DeferredInterrupt() as interrupt:
        tmp = make_temp_dir(out)
        try:
            build = TargetBuild(bundle, manifest, tmp, draft_tokens, spec, progress, interrupt.check,
                                precision or "fp16")
            _copy_base(build)
            target = (android if name == "android" else jetson).add(build)
            result = _finish(build, target)
            open_modes(tmp)
            interrupt.check()
            install(tmp, out, force)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result


def _copy_base(build: TargetBuild) -> None:
    files = [rel for rel, _ in build.manifest.iter_files()]       # the manifest is written by `_finish`
    for i, rel in enumerate(files):
        # copies, not hard links: onnx refuses external data in a file with several links
        shutil.copy2(build.base / rel, build.path(rel))
        if i % 64 == 0:
            build.step("copy bundle", i, len(files))
    build.step("copy bundle", len(files), len(files))


def _finish(build: TargetBuild, target: TargetSpec) -> Manifest:
    files = dict(build.manifest.files)
    for rel in build.added:
        p = build.root / rel
        files[rel] = FileEntry(p.stat().st_size, sha256_file(p))
    manifest = dataclasses.replace(build.manifest, files=files, target=target)
    (build.root / naming.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return load_manifest(build.root)          # what the runtime will read, validated
