"""``spac-serve BUNDLE_DIR``: an OpenAI-compatible HTTP server over one warm generator."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path
from typing import Optional

import click

from .common import Command, setup_logging, sigterm_as_exception, user_errors
from .placement import DECODE_OPTIONS, load_generator, placement_options

log = logging.getLogger("spac_ort.serve")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the address is printed on stderr).")
@click.option("--model-name", help="Model id clients send and /v1/models lists (default: the bundle's directory "
                                   "name).")
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Requests that may wait while one generates; more get HTTP 429.")
@placement_options
@click.option("-v", "--verbose", count=True, help="More messages on stderr (-vv: debug, with each HTTP request).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def main(bundle: Path, host: str, port: int, model_name: Optional[str], queue_size: int, verbose: int, quiet: bool,
         **placement) -> None:
    """Serve BUNDLE over HTTP with OpenAI's completions and chat API: one model, one
    generator, requests run one at a time and the expert placement stays warm between
    them. Needs the serve extra: pip install 'spac-ort[serve]'. Ctrl-C or SIGTERM finishes
    the requests in flight and exits."""
    setup_logging(verbose, quiet)
    with user_errors(), sigterm_as_exception():
        uvicorn = _serve_deps()
        from ..serve.app import build_app
        from ..serve.engine import Engine

        sock = _listen(host, port)
        draft_tokens, no_speculative, no_lookup = (placement.pop(name) for name in DECODE_OPTIONS)
        gen = load_generator(bundle, progress=not quiet, **placement)
        engine = Engine(gen, queue_size=queue_size, draft_tokens=draft_tokens,
                        speculative=False if no_speculative else None, lookup=not no_lookup,
                        template=_template(gen))
        name = model_name or Path(bundle).resolve().name
        app = build_app(engine, name)
        address = sock.getsockname()
        click.echo(f"serving '{name}' at http://{address[0]}:{address[1]}/v1 (chat: "
                   f"{'yes' if engine.template else 'no, the bundle has no chat template'}); Ctrl-C stops",
                   err=True)
        config = uvicorn.Config(app, log_level="info" if verbose > 1 else "warning", access_log=verbose > 1,
                                timeout_graceful_shutdown=60, lifespan="on")
        for sig in (signal.SIGINT, signal.SIGTERM):     # the server drains on them, then re-raises them
            signal.signal(sig, _drained)                 # here: the drained server exits 0
        uvicorn.Server(config).run(sockets=[sock])
        done = engine.metrics.requests
        click.echo(f"stopped after {done['ok']} requests ({done['error']} failed, {done['cancelled']} cancelled, "
                   f"{done['rejected']} refused)", err=True)


def _drained(signum: int, frame: object) -> None:
    """A stop signal after the server drained: nothing left to do."""


def _serve_deps():  # type: ignore[no-untyped-def]
    from ..errors import MissingDependencyError

    try:
        import jinja2  # noqa: F401 (the chat template)
        import starlette  # noqa: F401 (the app)
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(f"spac-serve needs {exc.name}; install the serve extra: "
                                     "pip install 'spac-ort[serve]'") from None
    return uvicorn


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket, so that a taken port is one clear error before the model loads."""
    from ..errors import ConfigError

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host or "
                          "--port") from None
    return sock


def _template(gen):  # type: ignore[no-untyped-def]
    from ..errors import BundleError
    from ..serve.chat import ChatTemplate

    m, tok = gen.manifest, gen.tokenizer
    if tok is None:
        return None
    try:
        return ChatTemplate.from_bundle(gen.bundle, m.chat_template, tok.token_text(m.bos_token_id),
                                        tok.token_text(m.eos_token_ids[0] if m.eos_token_ids else None))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"bundle {gen.bundle}: chat template unreadable ({exc}); re-export the bundle") from None


if __name__ == "__main__":
    main()
