"""spac-export under concurrent exports, signals, killed runs and corrupt checkpoints:
exact exit codes, one stderr line, and nothing left beside the bundle."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner, Result

from spac_ort.cli import export as export_cli
from spac_ort.export import ExportOptions, export_bundle, install, pipeline
from spac_ort.errors import Terminated
from tests.tiny import build

MANIFEST = "spac-manifest.json"
TAKEN = "already exists (written by another export while this one ran); pass --force to replace it"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build("qwen3_moe", tmp_path_factory.mktemp("ckpt") / "a", seed=0)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory) -> Path:
    return build("qwen3_moe", tmp_path_factory.mktemp("ckpt") / "b", seed=1)


@pytest.fixture(params=["renameat2", "rename"])
def mechanism(request, monkeypatch) -> str:
    """The install with renameat2(2), and with plain rename(2) where it is missing."""
    if request.param == "rename":
        monkeypatch.setattr(install, "_renameat2", lambda src, dst, flags: False)
    return request.param


def export(*args: object) -> Result:
    return CliRunner().invoke(export_cli.main, [str(a) for a in args])


def one_line(result: Result, exit_code: int, prefix: str = "error:") -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return lines[0]


def listing(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def before_install(monkeypatch, action: Callable[[], None]) -> None:
    """Run ``action`` once, when the export under test has finished its temp dir and before
    it installs it (exports that ``action`` runs itself are not hooked)."""
    real = pipeline.open_modes

    def hooked(root: Path) -> None:
        monkeypatch.setattr(pipeline, "open_modes", real)
        action()
        real(root)

    monkeypatch.setattr(pipeline, "open_modes", hooked)


# ---- concurrent exports to one target -----------------------------------------------------

def test_bundle_installed_meanwhile_is_kept_without_force(ckpt, other_ckpt, tmp_path, monkeypatch, mechanism):
    out = tmp_path / "bundle"
    theirs: dict[str, bytes] = {}

    def other_export() -> None:
        export_bundle(ExportOptions(other_ckpt, out, check_model=False))
        theirs["manifest"] = (out / MANIFEST).read_bytes()

    before_install(monkeypatch, other_export)
    line = one_line(export(ckpt, "-o", out, "--skip-model-check"), 2)
    assert line == f"error: bundle {out} {TAKEN}"
    assert listing(tmp_path) == ["bundle"]
    assert (out / MANIFEST).read_bytes() == theirs["manifest"]


def test_force_replaces_a_bundle_installed_meanwhile(ckpt, other_ckpt, tmp_path, monkeypatch, mechanism):
    out = tmp_path / "bundle"
    seen: list[bytes] = []

    def other_export() -> None:
        export_bundle(ExportOptions(other_ckpt, out, check_model=False))
        seen.append((out / MANIFEST).read_bytes())

    before_install(monkeypatch, other_export)
    result = export_bundle(ExportOptions(ckpt, out, force=True, check_model=False))
    assert listing(tmp_path) == ["bundle"]
    ours = (out / MANIFEST).read_bytes()
    assert ours == result.manifest.to_json().encode() and ours != seen[0]


def test_empty_directory_made_meanwhile_is_taken(ckpt, tmp_path, monkeypatch, mechanism):
    out = tmp_path / "bundle"
    before_install(monkeypatch, out.mkdir)
    export_bundle(ExportOptions(ckpt, out, check_model=False))
    assert listing(tmp_path) == ["bundle"] and (out / MANIFEST).is_file()


def test_target_lock_serializes_and_is_removed(tmp_path):
    out, order = tmp_path / "bundle", []

    def second() -> None:
        with install.target_lock(out):
            order.append("second")

    with install.target_lock(out):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    assert listing(tmp_path) == []


# ---- signals --------------------------------------------------------------------------------

def test_sigterm_in_process_removes_the_temp_dir(ckpt, tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def terminate_half_way(stage: str, done: int, total: int) -> None:
        if stage == "experts" and done == total // 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated):
        export_bundle(ExportOptions(ckpt, tmp_path / "bundle", check_model=False), terminate_half_way)
    assert listing(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sig,code,line", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_cli_export_leaves_nothing(tmp_path, sig, code, line):
    """A real SIGTERM or Ctrl-C to the command while it writes experts."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "spac_ort.cli.export", "-o", str(tmp_path / "bundle")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(tmp_path.glob(".bundle.partial-*/layers/001/experts/*.onnx"))) > 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before the signal could be sent"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [line] and out == ""
    assert listing(tmp_path) == []


# ---- leftovers of killed exports ----------------------------------------------------------

def test_partials_of_dead_exports_are_removed_live_ones_kept(ckpt, tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = tmp_path / f".bundle.partial-{dead.pid}-k1ll3d_"
        running = tmp_path / f".bundle.partial-{live.pid}-runn1ng"
        elsewhere = tmp_path / f".other.partial-{dead.pid}-0th3r"
        for d in (stale / "layers/000/experts", running / "layers", elsewhere):
            d.mkdir(parents=True)
            (d / "x.onnx").write_bytes(b"x" * 1000)
        with caplog.at_level(logging.INFO, logger=install.__name__):
            export_bundle(ExportOptions(ckpt, tmp_path / "bundle", check_model=False))
        assert listing(tmp_path) == sorted(["bundle", running.name, elsewhere.name])
        assert (running / "layers/x.onnx").is_file()
        removed = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "removed" in r.getMessage()]
        assert removed == [f"removed {stale}, left by export process {dead.pid} that no longer runs"]
    finally:
        live.kill()
        live.wait()


# ---- permissions ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["absent", "empty directory"])
def test_bundle_has_the_modes_of_the_umask(ckpt, tmp_path, target):
    out = tmp_path / "bundle"
    if target == "empty directory":
        out.mkdir(mode=0o700)
    previous = os.umask(0o027)
    try:
        export_bundle(ExportOptions(ckpt, out, check_model=False))
    finally:
        os.umask(previous)
    assert listing(tmp_path) == ["bundle"]
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o750 if path.is_dir() else 0o640), f"{path}: {oct(mode)}"


# ---- corrupt checkpoints --------------------------------------------------------------------

@pytest.mark.parametrize("tensor,value", [("model.layers.1.mlp.experts.3.up_proj.weight", math.nan),
                                          ("model.embed_tokens.weight", math.inf)])
def test_non_finite_weight_is_a_corrupt_checkpoint(ckpt, tmp_path, tensor, value):
    from safetensors.torch import load_file, save_file

    src = shutil.copytree(ckpt, tmp_path / "ckpt")
    weights = load_file(src / "model.safetensors")
    weights[tensor][1, 2] = value
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "out").mkdir()
    line = one_line(export(src, "-o", tmp_path / "out" / "bundle"), 2)
    assert line == (f"error: tensor {tensor} has NaN or Inf values: the checkpoint in {src} is corrupt; "
                    "re-download or fix it")
    assert listing(tmp_path / "out") == []
