"""Installing a finished bundle: the target checked, temp dirs of killed exports
removed, the temp dir renamed into place under a lock (no-replace; with ``--force`` an
atomic swap), directories given normal modes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import naming
from ..errors import BundleError

try:
    import fcntl
except ImportError:  # no flock: the no-replace rename alone guards the target
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
PARTIAL = ".partial-"    # temp dirs are .NAME.partial-PID-XXXX, PID the exporting process
LOCK = ".lock"           # .NAME.lock, held while the target is checked and renamed into

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_TAKEN = (errno.EEXIST, errno.ENOTEMPTY)


# ---- the target ---------------------------------------------------------------------------
def check_target(out: Path, force: bool, late: bool = False) -> bool:
    """Raise unless ``out`` may become the bundle. True when it holds a bundle that
    ``force`` replaces; False when it is absent or an empty directory. ``late``: checked
    again at install time, when a bundle there was written by another export meanwhile."""
    if not out.exists():
        if not out.parent.is_dir():
            raise BundleError(f"the parent directory of {out} does not exist; create it or choose another -o")
        return False
    if not out.is_dir():
        raise BundleError(f"{out} exists and is not a directory; choose another -o")
    if not any(out.iterdir()):
        return False
    if not (out / naming.MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not a spac-ort bundle; refusing to overwrite it, choose another -o")
    if not force:
        meanwhile = " (written by another export while this one ran)" if late else ""
        raise BundleError(f"bundle {out} already exists{meanwhile}; pass --force to replace it")
    return True


def _partial_owner(path: Path, out: Path) -> Optional[int]:
    """PID of the export that made temp dir ``path`` for ``out``; None if not one of ours."""
    m = re.fullmatch(re.escape(f".{out.name}{PARTIAL}") + r"(\d+)-\w+", path.name)
    return int(m[1]) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by another user
        pass
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the temp dirs beside ``out`` of exports that were killed (their process no
    longer exists); those of running exports are kept. Returns the removed paths."""
    removed = []
    for path in out.parent.iterdir():
        pid = _partial_owner(path, out)
        if pid is None or _alive(pid) or path.is_symlink() or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by export process %d that no longer runs", path, pid)
        removed.append(path)
    return removed


# ---- install ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _renameat2_fn() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]   # returns int
    return fn


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(2) with ``flags``; False where the C library or file system lacks it."""
    fn = _renameat2_fn()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _same_file(fd: int, path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return os.path.samestat(os.fstat(fd), os.stat(path))
    return False


def _lock(path: Path) -> Optional[int]:
    """An fd holding ``path`` exclusively; None where the file system has no flock. A lock
    file that its previous holder removed while this process waited is stale: retry."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd
        except OSError as exc:   # some network mounts
            os.close(fd)
            log.debug("cannot lock %s (%s); relying on the no-replace rename", path, exc)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def target_lock(out: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``out`` exclusively; the file is removed on release."""
    path = out.with_name(f".{out.name}{LOCK}")
    fd = _lock(path) if fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)


def _swap(tmp: Path, out: Path) -> Path:
    """Put the bundle ``tmp`` at ``out`` in place of the one there; returns where the old one
    went. Atomic with renameat2; otherwise two renames, the old bundle moved back on failure."""
    if _renameat2(tmp, out, _RENAME_EXCHANGE):
        return tmp
    old = tmp.with_name(tmp.name + "_old")   # a temp dir name too: removed if this process dies
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def install(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished temp dir into place. Without ``force`` a bundle installed at ``out``
    since the start (by a concurrent export) is a `BundleError`; with it the old bundle is
    replaced only now that the new one is complete."""
    with target_lock(out):
        if check_target(out, force, late=True):
            old = _swap(tmp, out)
        else:
            old = None
            try:
                if out.is_dir():
                    out.rmdir()   # empty: rename(2) would silently replace it, NOREPLACE would refuse it
                if not _renameat2(tmp, out, _RENAME_NOREPLACE):
                    os.rename(tmp, out)
            except OSError as exc:
                if exc.errno in _TAKEN:
                    check_target(out, force, late=True)   # says what took the target
                raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def open_modes(root: Path) -> None:
    """mkdtemp makes ``root`` 0700; give it and every directory in it the mode mkdir gives
    here (0o777 & ~umask), read from a probe rather than by changing the process umask."""
    probe = root / ".mode"
    probe.mkdir()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.rmdir()
    for d, _, _ in os.walk(root):
        os.chmod(d, mode)


def make_temp_dir(out: Path) -> Path:
    """The export's temp dir beside ``out``, named for this process (see `remove_stale_partials`)."""
    return Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
