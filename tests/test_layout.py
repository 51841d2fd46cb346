"""The code layout (#30): no import circles among edgekit's modules, no module imports another's private
names, every package says what it offers, and the public names users import are where they import them.

The import graph is grimp's (the library import-linter is built on): `grimp.build_graph("edgekit")` reads
every `import` statement, at module level and inside functions alike (and under `if TYPE_CHECKING:`), so
a lazy import that closes a circle counts too. A module is not taken to import its parent package (Python
runs a package's `__init__` before its submodules; that is the package idiom, not a circle). The same check
from a shell: `python -m pytest tests/test_layout.py`.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgekit"


def _graph() -> grimp.ImportGraph:
    try:
        import grimp
    except ImportError:
        pytest.fail("grimp is missing: it is in the test extra (pip install -e '.[test]')")
    spec = importlib.util.find_spec("edgekit")
    assert spec is not None and spec.origin is not None and Path(spec.origin).resolve().parent == PACKAGE, \
        f"edgekit imports from {spec and spec.origin}, not this checkout: run python -m pytest from {ROOT}"
    return grimp.build_graph("edgekit", cache_dir=None)  # no cache folder in the checkout


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles, seen = [], set()
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)  # imported -> ... -> importer
            if back is None or frozenset(back) in seen:
                continue
            seen.add(frozenset(back))
            line = min(d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported))
            cycles.append(f"{importer}:{line} -> " + " -> ".join(back))
    assert not cycles, "import circles (move what both sides need into a module below them):\n" + "\n".join(cycles)


def _edgekit_module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_names() -> None:
    """`from edgekit.x import _y`, `import edgekit._x`, `from edgekit._x import y` and `m._y` for an edgekit
    module or name `m` imported here: a name one module uses from another is public in its owner."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(ROOT)
        imported: set[str] = set()  # local names bound to edgekit modules or their names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{where}:{node.lineno}: a relative import; edgekit imports absolutely"
                if (node.module or "").split(".")[0] != "edgekit":
                    continue
                if any(_private(p) for p in node.module.split(".")):
                    found.append(f"{where}:{node.lineno}: from {node.module} import ...")
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
                    imported.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "edgekit":
                        if any(_private(p) for p in alias.name.split(".")):
                            found.append(f"{where}:{node.lineno}: import {alias.name}")
                        imported.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) and node.value.id in imported:
                found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used across modules (make them public in their owner, or move them there):\n" + "\n".join(found)


def test_every_package_says_what_it_offers() -> None:
    packages = sorted(PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 10
    missing = [str(p.relative_to(ROOT)) for p in packages if not (ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or "").strip()]
    assert not missing, f"package __init__ without a docstring: {missing}"


def test_every_name_a_package_exports_is_there() -> None:
    for path in sorted(PACKAGE.rglob("__init__.py")):
        module = importlib.import_module(_edgekit_module(path))
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{module.__name__}.__all__ names {name!r}, which it does not have"


@pytest.mark.parametrize("module, names", [
    ("edgekit", ["load", "__version__"]),  # the README's `edgekit.load`
    ("edgekit.loader", ["load", "BundleEngine"]),
    ("edgekit.errors", ["UsageError", "GateFailed", "BackendUnavailable", "EdgekitError"]),
    ("edgekit.examples.efficientnet", []),
    ("edgekit.quantize", ["QuantizeOptions", "QuantizeReport", "quantize_model", "quantize_with_ranges", "collect_stats",
                          "prepare_model", "copy_model", "read_exclude_file", "cache_dir"]),
    ("edgekit.bench.run", ["BenchOptions", "bench_artifact"]),
    ("edgekit.bench.baseline", ["resolve_baseline"]),
    ("edgekit.optimize", ["OptimizeOptions", "optimize_model", "REPORT"]),
    ("edgekit.compile", ["compile_model", "open_engine", "read_artifact", "target_for"]),
    ("edgekit.executors", ["Executor", "Done", "executor_from_spec", "placement"]),
    ("edgekit.devices", ["Device", "DeviceJob", "bench_on_device", "bench_on_devices", "resolve_device"]),
    ("edgekit.data.calibration", ["CalibrationSet", "calibration_set"]),
    ("edgekit.cli", ["cli", "main"]),
])
def test_public_names_are_where_users_import_them(module: str, names: list[str]) -> None:
    m = importlib.import_module(module)
    missing = [n for n in names if not hasattr(m, n)]
    assert not missing, f"{module} lacks {missing}"
