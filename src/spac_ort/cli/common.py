"""What every command shares: error rendering, logging, progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Optional

import click

from ..errors import SpacError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """SpacError -> one line on stderr and its exit code; Ctrl-C -> exit 130.
    Unexpected exceptions also become one line unless SPAC_DEBUG=1."""
    try:
        yield
    except SpacError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        if os.environ.get("SPAC_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(f"error: internal error {type(exc).__name__}: {msg} (rerun with SPAC_DEBUG=1 for details "
                   "and report it)", err=True)
        sys.exit(1)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class Progress:
    """A progress callback (stage, done, total) drawing one bar per stage on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.stage: Optional[str] = None
        self.bar = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            self.bar = click.progressbar(length=total, label=stage, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.stage = None, None
