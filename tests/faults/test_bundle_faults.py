"""Hostile bundles: paths that lead out, inconsistent manifests, fuzzed manifests,
truncated and bit-flipped graphs, corrupt weights. Each ends in one `error:` line and
exit 2 (or, for a harmless change, a normal run) and opens nothing outside the bundle."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spac_ort.errors import BundleError, ChecksumError, ManifestError
from spac_ort.bundle_files import check_present
from spac_ort.manifest import load_manifest
from tests.faults.conftest import count_case, edit_manifest, inspect, link_copy, one_line_error, rewrite, run

# ---- paths that lead out of the bundle ------------------------------------------------------

PATH_ATTACKS = {
    "template-dotdot": lambda d: d["experts"].update(template="../outside/layers/{layer:03d}/experts/{expert:03d}.onnx"),
    "template-absolute": lambda d: d["experts"].update(template="/etc/{layer}{expert}"),
    "template-passwd": lambda d: d["experts"].update(template="../../../../etc/passwd{layer:.0}{expert:.0}"),
    "tokenizer-dotdot": lambda d: d.update(tokenizer="../outside/tokenizer/tokenizer.json"),
    "tokenizer-unlisted": lambda d: d.update(tokenizer="tokenizer/other.json"),
    "draft-absolute": lambda d: d["draft"].update(graph="/etc/passwd"),
    "files-key-dotdot": lambda d: d["files"].update({"../outside/embed.onnx": d["files"]["embed.onnx"]}),
    "files-key-backslash": lambda d: d["files"].update({"layers\\000\\x.onnx": d["files"]["embed.onnx"]}),
    "files-key-dot": lambda d: d["files"].update({"./embed.onnx": d["files"]["embed.onnx"]}),
}


@pytest.mark.parametrize("attack", sorted(PATH_ATTACKS))
def test_manifest_paths_must_stay_inside(hostile, attack):
    edit_manifest(hostile, PATH_ATTACKS[attack])
    with pytest.raises(ManifestError):
        load_manifest(hostile)
    one_line_error(run(hostile, "-p", "hi", "-n", "2"), "field '")


def _symlink_expert_data(bundle: Path) -> None:
    target = bundle.parent / "outside" / "layers/001/experts/005.onnx.data"
    link = bundle / "layers/001/experts/005.onnx.data"
    link.unlink()
    link.symlink_to(target)


def _symlink_layer_dir(bundle: Path) -> None:
    shutil.rmtree(bundle / "layers/002")
    (bundle / "layers/002").symlink_to(bundle.parent / "outside" / "layers/002", target_is_directory=True)


def _symlink_tokenizer(bundle: Path) -> None:
    (bundle / "tokenizer/tokenizer.json").unlink()
    (bundle / "tokenizer/tokenizer.json").symlink_to(bundle.parent / "outside" / "tokenizer/tokenizer.json")


SYMLINKS = {"expert-data": _symlink_expert_data, "layer-dir": _symlink_layer_dir, "tokenizer": _symlink_tokenizer}


@pytest.mark.parametrize("attack", sorted(SYMLINKS))
def test_symlinks_out_of_the_bundle_are_refused(hostile, attack):
    SYMLINKS[attack](hostile)
    with pytest.raises(ManifestError, match="resolves outside the bundle"):
        check_present(hostile, load_manifest(hostile))
    one_line_error(run(hostile, "-p", "hi", "-n", "2"), "resolves outside the bundle")
    one_line_error(run(hostile, "-p", "hi", "-n", "2", "--verify"), "resolves outside the bundle")


def test_symlink_inside_the_bundle_is_fine(hostile):
    f = hostile / "layers/001/experts/005.onnx.data"
    moved = hostile / "layers/001/experts/moved.bin"
    f.rename(moved)
    f.symlink_to("moved.bin")
    check_present(hostile, load_manifest(hostile))
    res = run(hostile, "-p", "hi", "-n", "2", "--verify")
    count_case(res.exit_code == 0)
    assert res.exit_code == 0, res.output


def _opened_outside(bundle: Path, *args: str) -> tuple[int, list[str]]:
    """Run spac-run under strace; the exit code and the files opened under bundle/../outside."""
    log = bundle.parent / "strace.log"
    cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
           sys.executable, "-m", "spac_ort.cli.run", str(bundle), *args]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    outside = str((bundle.parent / "outside").resolve())
    text = log.read_text()
    assert "spac-manifest.json" in text, "strace recorded no opens"           # the probe sees opens at all
    opened = [line for line in text.splitlines() if "/outside/" in line or outside in line]
    return proc.returncode, opened


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("attack", ["template-dotdot", "tokenizer-dotdot", "expert-data-symlink"])
def test_no_file_outside_the_bundle_is_opened(hostile, attack):
    if attack == "expert-data-symlink":
        _symlink_expert_data(hostile)
    else:
        edit_manifest(hostile, PATH_ATTACKS[attack])
    for extra in ([], ["--verify"], ["--policy", "spac", "--fast-budget", "10%"]):
        code, opened = _opened_outside(hostile, "-p", "hi", "-n", "2", *extra)
        count_case(code == 2 and not opened)
        assert code == 2 and not opened, (code, opened[:5])
    if attack != "expert-data-symlink":
        code, opened = _opened_outside(hostile, "--calibrate", str(hostile.parent / "p.json"))
        count_case(code == 2 and not opened)
        assert code == 2 and not opened, (code, opened[:5])


def test_inspect_verify_covers_the_tokenizer(hostile):
    tok = hostile / "tokenizer/tokenizer.json"
    raw = bytearray(tok.read_bytes())
    raw[100] ^= 0x01
    rewrite(tok, bytes(raw))
    one_line_error(inspect(hostile, "--verify"), "sha256", "tokenizer/tokenizer.json")


# ---- inconsistent manifests -------------------------------------------------------------------

FIELD_FAULTS = {
    "top-k-zero": (lambda d: d["dims"].update(top_k=0), "dims.top_k"),
    "top-k-above-experts": (lambda d: d["dims"].update(top_k=65), "dims.top_k"),
    "hidden-negative": (lambda d: d["dims"].update(hidden_size=-4), "dims.hidden_size"),
    "experts-huge": (lambda d: d["dims"].update(num_experts=10 ** 30), "dims.num_experts"),
    "template-unknown-field": (lambda d: d["experts"].update(template="layers/{x}/{layer}/{expert}.onnx"), "template"),
    "template-unclosed": (lambda d: d["experts"].update(template="layers/{layer/{expert}.onnx"), "template"),
    "template-string-format": (lambda d: d["experts"].update(template="layers/{layer:s}/{expert}.onnx"), "template"),
    "template-twice": (lambda d: d["experts"].update(template="{layer}/{layer}/{expert}.onnx"), "template"),
    "no-moe-layer": (lambda d: d.update(layer_kinds=["dense"] * 4), "layer_kinds"),
    "eos-outside-vocab": (lambda d: d.update(eos_token_ids=[10 ** 9]), "eos_token_ids"),
    "scaling-nan": (lambda d: d["routing"].update(routed_scaling_factor=float("nan")), "routed_scaling_factor"),
    "unlisted-layer": (lambda d: d["files"].pop("layers/001/layer.onnx"), "files"),
    "negative-size": (lambda d: d["files"]["final.onnx"].update(size=-1), "size"),
}


@pytest.mark.parametrize("fault", sorted(FIELD_FAULTS))
def test_inconsistent_manifest_names_the_field(hostile, fault):
    change, field = FIELD_FAULTS[fault]
    edit_manifest(hostile, change)
    with pytest.raises(ManifestError, match=field):
        load_manifest(hostile)
    one_line_error(run(hostile, "-p", "hi", "-n", "2"), field)


# ---- fuzzed manifests -------------------------------------------------------------------------

_WEIRD = [None, True, -1, 0, 10 ** 18, 2.5, float("inf"), "", "ünïcødé ✓ 🚀", "../../etc/passwd", "/abs",
          [], {}, [1, "x"], {"k": "v"}]


def _paths(node, prefix=()):
    """Every (container, key) position in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield node, k
        if isinstance(v, (dict, list)) and len(v) < 64:        # skip the big sha tables' rows
            yield from _paths(v, prefix + (k,))


def _mutate(data: dict, rng: random.Random) -> str:
    spots = list(_paths(data))
    node, key = rng.choice(spots)
    kind = rng.choice(["delete", "replace", "replace"])
    if kind == "delete":
        if isinstance(node, dict):
            del node[key]
        else:
            node.pop(key)
        return f"delete {key!r}"
    node[key] = rng.choice(_WEIRD)
    return f"set {key!r} = {node[key]!r}"


def test_fuzzed_manifests_fail_cleanly_or_run(demo_bundle, tmp_path):
    """Random deletions, type changes, huge numbers, unicode: either a clean one-line error
    (exit 2) or, where the change is harmless, a normal run (exit 0)."""
    rng = random.Random(1234)
    original = json.loads((demo_bundle / "spac-manifest.json").read_text())
    bundle = link_copy(demo_bundle, tmp_path / "fuzz")
    outcomes = {0: 0, 2: 0}
    for case in range(60):
        data = json.loads(json.dumps(original))
        what = [_mutate(data, rng) for _ in range(rng.choice([1, 1, 2]))]
        rewrite(bundle / "spac-manifest.json", json.dumps(data).encode())
        res = run(bundle, "-p", "hi", "-n", "2", "-q")
        err = res.stderr.strip()
        ok = (res.exit_code == 0 or (res.exit_code == 2 and err.startswith("error:") and "\n" not in err
                                      and "internal error" not in err))
        count_case(ok)
        assert ok, f"case {case} {what}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
        outcomes[res.exit_code] += 1
    assert outcomes[2] > outcomes[0] > 0, outcomes       # most mutations are caught; some are harmless


# ---- truncated, bit-flipped and corrupt files -----------------------------------------------

GRAPHS = ["embed.onnx", "final.onnx", "final_greedy.onnx", "layers/000/layer.onnx", "layers/003/layer.onnx",
          "draft/model.onnx", "layers/000/experts/000.onnx", "layers/002/experts/010.onnx"]


@pytest.mark.parametrize("rel", GRAPHS)
def test_truncated_graph(hostile, rel):
    f = hostile / rel
    rewrite(f, f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ChecksumError):
        check_present(hostile, load_manifest(hostile))
    one_line_error(run(hostile, "-p", "hi", "-n", "2"), rel, "truncated")


@pytest.mark.parametrize("rel", GRAPHS)
def test_same_size_garbage_graph(hostile, rel):
    """A graph overwritten with garbage of the same size: caught at load without
    --verify (no traceback, no "internal error"), and by sha256 with it."""
    f = hostile / rel
    rewrite(f, random.Random(rel).randbytes(f.stat().st_size))
    for policy in ([], ["--policy", "spac", "--fast-budget", "17%"], ["--experts", "sessions"]):
        res = run(hostile, "-p", "hi", "-n", "2", *policy)
        if rel == "layers/002/experts/010.onnx" and not policy[:1] == ["--experts"]:
            # the grouped and tiered backends read expert weights, not expert graphs (but the first)
            count_case(res.exit_code == 0)
            assert res.exit_code == 0, res.output
        else:
            one_line_error(res, "re-export")
    one_line_error(run(hostile, "-p", "hi", "-n", "2", "--verify"), "sha256", rel)


def test_bit_flips_in_graphs_fail_cleanly_or_run(hostile):
    rng = random.Random(7)
    for case in range(24):
        rel = rng.choice(GRAPHS)
        f = hostile / rel
        original = f.read_bytes()
        raw = bytearray(original)
        for _ in range(rng.choice([1, 4, 32])):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        rewrite(f, bytes(raw))
        res = run(hostile, "-p", "hi", "-n", "2", "-q")
        err = res.stderr.strip()
        ok = res.exit_code == 0 or (res.exit_code == 2 and err.startswith("error:") and "\n" not in err
                                     and "internal error" not in err)
        count_case(ok)
        assert ok, f"case {case} {rel}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
        rewrite(f, original)


def test_nan_weights_stop_with_an_error_naming_verify(hostile):
    data = hostile / "embed.onnx.data"
    rewrite(data, b"\xff" * data.stat().st_size)           # 0xffffffff is a NaN in float32
    err = one_line_error(run(hostile, "-p", "hi", "-n", "4"), "non-finite logits", "--verify")
    assert "position" in err
    one_line_error(run(hostile, "-p", "hi", "-n", "4", "--verify"), "sha256", "embed.onnx.data")


def test_nan_expert_weights_under_a_policy(hostile):
    for e in range(64):
        data = hostile / f"layers/001/experts/{e:03d}.onnx.data"
        rewrite(data, b"\xff" * data.stat().st_size)
    for extra in ([], ["--policy", "lru", "--fast-budget", "10%"], ["--policy", "spac", "--fast-budget", "10%"]):
        one_line_error(run(hostile, "-p", "hi", "-n", "4", *extra), "non-finite logits")


def test_manifest_that_is_not_json_or_too_deep(hostile):
    for text in (b"{ not json", b"[" * 100000 + b"]" * 100000, b"\xff\xfe", b"[]", b"null"):
        rewrite(hostile / "spac-manifest.json", text)
        with pytest.raises(BundleError):
            load_manifest(hostile)
        one_line_error(run(hostile, "-p", "hi"), "spac-manifest.json")


def test_graph_io_must_match_the_manifest(hostile):
    """The backbone binds inputs by position: a graph whose inputs differ in name or
    order from the manifest's is refused at load."""
    def swap(d):
        d["io"]["layer"]["inputs"] = list(reversed(d["io"]["layer"]["inputs"]))
    edit_manifest(hostile, swap)
    one_line_error(run(hostile, "-p", "hi", "-n", "2"), "layers/000/layer.onnx", "does not belong")
