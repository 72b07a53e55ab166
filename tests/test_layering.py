"""Package layering: the core imports no subpackage; the runtime runs without torch,
transformers, optimum or safetensors; only the CLI imports click; no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "spac_ort"
HEAVY = ("torch", "transformers", "optimum", "safetensors")


def _module(path: Path) -> str:
    parts = ("spac_ort",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path) -> set[str]:
    """Every module this file imports (at any depth of the file), as absolute names; for
    ``from X import name`` also ``X.name`` where that is a module of the package."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
            mod = ".".join(x for x in (base, node.module or "") if x)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


MODULES = {_module(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Imports of the package's own modules relative to the package root (".runtime.x"),
    others by their own name."""
    out = set()
    for name in _absolute(path):
        out.add("." + name[len("spac_ort."):] if name.startswith("spac_ort.") else name)
    return out


def test_core_imports_no_subpackage():
    for path in PKG.glob("*.py"):
        for name in _imports(path):
            assert not name.startswith((".export", ".runtime", ".cli", ".targets")), f"{path.name} imports {name}"


def test_runtime_never_imports_export_or_heavy_deps():
    for path in (PKG / "runtime").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith((".export", ".cli", "click") + HEAVY), f"{path.name} imports {name}"


def test_no_import_cycles():
    import networkx as nx

    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        for imported in _absolute(path):
            if imported in MODULES and imported != name and not name.startswith(imported + "."):
                graph.add_edge(name, imported)        # a module importing its own package is not a cycle
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_module_and_function_sizes():
    """Small modules (about 300 lines at most), short functions (about 50)."""
    for path in PKG.rglob("*.py"):
        lines = path.read_text().count("\n")
        assert lines <= 330, f"{path.relative_to(PKG)} has {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(PKG)}:{node.lineno} {node.name} has {length} lines"


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
