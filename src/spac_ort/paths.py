"""Bundle paths are input from strangers: every path a manifest names must stay inside
the bundle.

Two checks, both before any file is opened:

- `path_problem` (pure, at manifest parse): a path is relative, POSIX, normalised
  (no ``.``/``..``/empty components, no backslash, no NUL) — so it cannot name a file
  outside the bundle by its spelling;
- `Confinement.resolve` (at load): the path, symlinks and all, resolves inside the
  bundle's real directory, so a symlink planted in a bundle cannot lead out of it either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from .errors import ManifestError


def path_problem(rel: str) -> Optional[str]:
    """Why ``rel`` is not an acceptable bundle-relative path, or None."""
    if not rel:
        return "is empty"
    if "\x00" in rel or "\\" in rel:
        return "contains a NUL or a backslash"
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return f"'{rel}' is an absolute path"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"'{rel}' is not a normalised relative path (no '..', '.', or empty components)"
    return None


class Confinement:
    """Resolves bundle-relative paths, refusing any that leads outside the bundle.

    Parent directories are resolved once each (a bundle has thousands of expert files
    in a few directories); a file is resolved only when it is itself a symlink.
    """

    def __init__(self, bundle: Path):
        self.bundle = Path(bundle)
        self.root = os.path.realpath(self.bundle)
        self._dirs: dict[str, bool] = {}

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def resolve(self, rel: str, field: str = "files") -> Path:
        """``bundle / rel``, after checking that it resolves inside the bundle; ``field``
        names the manifest field that named ``rel`` (for the error)."""
        path = self.bundle / rel
        parent = os.path.dirname(rel)
        ok = self._dirs.get(parent)
        if ok is None:
            ok = self._dirs[parent] = self._inside(os.path.realpath(self.bundle / parent))
        if ok:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                return path                      # missing: the caller reports it
            if not stat.S_ISLNK(mode) or self._inside(os.path.realpath(path)):
                return path
        raise ManifestError(f"{self.bundle}: field '{field}' names {rel}, which resolves outside the bundle "
                            "through a symlink; the bundle is unsafe, re-export it with spac-export")
