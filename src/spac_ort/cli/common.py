"""What every command shares: error rendering, logging, progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Iterator, Optional

import click

from ..errors import ConfigError, SpacError, Terminated

# exit status of a process whose stdout reader went away (128 + SIGPIPE), as `yes | head` gives
EXIT_BROKEN_PIPE = 141


class OneLineErrors:
    """Mixin for click commands: usage errors (unknown option, bad value) as one line
    ``error: ... (see CMD --help)`` and exit 2, like every other user error."""

    def main(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)  # type: ignore[misc]
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            cmd = exc.ctx.command_path if getattr(exc, "ctx", None) else "the command"
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see {cmd} --help)", err=True)
            sys.exit(2)


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    pass


def writable_path(path: Optional[Path], option: str) -> None:
    """Check an output path before the work that fills it: its directory exists and
    takes files, and the path is not a directory."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: directory {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; name a file")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path} is not writable; choose another path")


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread, so files are closed on the way out."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def closed_stdout_ends_quietly() -> Iterator[None]:
    """A reader that goes away (``spac-run ... | head``) ends the command quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())      # no second error when Python flushes at exit
        sys.exit(EXIT_BROKEN_PIPE)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """SpacError -> one line on stderr and its exit code; Ctrl-C -> exit 130.
    Unexpected exceptions also become one line unless SPAC_DEBUG=1."""
    try:
        yield
    except SpacError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(143)
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


class _Formatter(logging.Formatter):
    """``warning: message`` for users; the logger's name too at debug verbosity."""

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        where = f" {record.name}" if self.debug else ""
        return f"{record.levelname.lower()}{where}: {record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a command run
    in-process, e.g. by tests, swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        pass


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(debug=verbose > 1))
    logging.basicConfig(level=level, handlers=[handler], force=True)


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
