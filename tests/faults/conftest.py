"""The fault-injection suite's harness: hostile bundle copies, the one expected outcome of
a user fault, and a count of the cases tried (printed at the end of the run)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from spac_ort.cli import export as export_cli
from spac_ort.cli import run as run_cli

CASES = {"tried": 0, "failed_outcome": 0}


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if CASES["tried"]:
        terminalreporter.write_line(f"fault injection: {CASES['tried']} cases tried, "
                                    f"{CASES['failed_outcome']} with the wrong outcome")


def count_case(ok: bool = True) -> None:
    CASES["tried"] += 1
    if not ok:
        CASES["failed_outcome"] += 1


def one_line_error(result: Any, *needles: str) -> str:
    """The outcome of every user fault: exit 2, one line ``error: ...`` on stderr, no traceback."""
    err = result.stderr.strip()
    ok = (result.exit_code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in result.output
          and "internal error" not in err and all(n in err for n in needles))
    count_case(ok)
    assert ok, f"exit {result.exit_code}, stderr:\n{result.stderr}\n{result.exception!r}"
    return err


def run(*args: Any) -> Any:
    return CliRunner().invoke(run_cli.main, [str(a) for a in args])


def inspect(*args: Any) -> Any:
    return CliRunner().invoke(export_cli.main, ["inspect", *[str(a) for a in args]])


def link_copy(src: Path, dst: Path) -> Path:
    """A bundle copy whose files are hard links (cheap); replace a file with `rewrite`
    before changing it, never write into a linked file."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def edit_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    path = bundle / "spac-manifest.json"
    data = json.loads(path.read_text())
    change(data)
    rewrite(path, json.dumps(data).encode())


@pytest.fixture()
def hostile(demo_bundle, tmp_path) -> Path:
    """A linked copy of the demo bundle in tmp/b, beside tmp/outside (a directory the bundle
    must never reach) holding a copy of the bundle's files."""
    outside = tmp_path / "outside"
    link_copy(demo_bundle, outside)
    return link_copy(demo_bundle, tmp_path / "b")
