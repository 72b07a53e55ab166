"""Package layering: the core imports no subpackage; the runtime runs without torch,
transformers, optimum or safetensors; only the CLI imports click."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "spac_ort"
HEAVY = ("torch", "transformers", "optimum", "safetensors")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_core_imports_no_subpackage():
    for path in PKG.glob("*.py"):
        for name in _imports(path):
            assert not name.startswith((".export", ".runtime", ".cli", ".targets")), f"{path.name} imports {name}"


def test_runtime_never_imports_export_or_heavy_deps():
    for path in (PKG / "runtime").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(("..export", "..cli", "click") + HEAVY), f"{path.name} imports {name}"


def test_only_cli_imports_click():
    for path in PKG.rglob("*.py"):
        if "cli" in path.relative_to(PKG).parts:
            continue
        assert not any(n == "click" or n.startswith("click.") for n in _imports(path)), path


def test_runtime_generates_with_heavy_deps_blocked(demo_bundle):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from spac_ort.runtime import Generator
gen = Generator.from_bundle({str(demo_bundle)!r})
print(len(list(gen.generate('def add(a, b):', max_new_tokens=5))))
assert not any(m.split('.')[0] in {HEAVY!r} for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
