"""Checks of a bundle's files against its manifest: present with the recorded size
(cheap, at every load), or also the recorded sha256 (``--verify``). Every path is
resolved through `paths.Confinement` first, so no check opens a file outside the bundle.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import BundleError, ChecksumError
from .manifest import FileEntry, Manifest, sha256_file
from .paths import Confinement


def _entries(bundle: Path, manifest: Manifest) -> Iterator[tuple[str, Path, FileEntry]]:
    confined = Confinement(bundle)
    for rel, entry in manifest.files.items():
        yield rel, confined.resolve(rel, "files"), entry
    for rel, entry in manifest.iter_expert_files():
        yield rel, confined.resolve(rel, "experts.template"), entry


def check_present(bundle: Path, manifest: Manifest) -> None:
    """Cheap check (no hashing): every file exists, inside the bundle, with the recorded size."""
    for rel, path, entry in _entries(bundle, manifest):
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BundleError(f"bundle file {rel} is missing from {bundle}; re-export the bundle with spac-export") from None
        except OSError as exc:
            raise BundleError(f"cannot read bundle file {rel} ({exc.strerror}); check its permissions") from None
        if st.st_size != entry.size or not stat.S_ISREG(st.st_mode):
            raise ChecksumError(f"bundle file {rel} has {st.st_size} bytes, the manifest says {entry.size}; "
                                "the file is truncated or replaced, re-export the bundle")


def verify_files(bundle: Path, manifest: Manifest,
                 progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Full check: sizes and sha256 of every file against the manifest."""
    check_present(bundle, manifest)
    entries = list(_entries(bundle, manifest))
    for i, (rel, path, entry) in enumerate(entries):
        if sha256_file(path) != entry.sha256:
            raise ChecksumError(f"sha256 of bundle file {rel} differs from the manifest; "
                                "the file is corrupt, re-export the bundle with spac-export")
        if progress:
            progress(i + 1, len(entries))
