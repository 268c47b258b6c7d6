"""The one-way flow of DESIGN.md, checked over the package's own imports (ast, no import run).

Every `import harness.x` / `from harness.x import y` counts, at module level or inside a
function (a lazy import is still a dependency), except those under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> set[str]:
    """The harness modules a file imports (a `from pkg import name` counts pkg.name when that
    is a module of the package, else pkg)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness") and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {_module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read():
    """Guards the checks below against passing on an empty graph."""
    assert "harness.run.runner" in GRAPH and "harness.engines" in GRAPH["harness.run.runner"]
    assert "harness.plan.cases" in GRAPH["harness.engines.llamabench"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "harness.telemetry")))
def test_telemetry_never_imports_an_engine(module):
    assert not [m for m in GRAPH[module] if _in(m, "harness.engines")], f"{module} imports an engine"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "harness.report")))
def test_report_never_reaches_a_driver(module):
    reached = sorted(m for m in _reachable(module) if _in(m, "harness.drivers"))
    assert not reached, f"{module} reaches {reached}"


def test_no_circle_between_plan_and_engines():
    circles = [(p, e) for p in MODULES if _in(p, "harness.plan") for e in MODULES if _in(e, "harness.engines")
               if e in _reachable(p) and p in _reachable(e)]
    assert not circles, f"plan and engines import each other: {circles[:3]}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "harness.results")))
def test_results_never_reach_a_driver(module):
    """Analysis reads stored metrics only: nothing in results/ can talk to a device."""
    reached = sorted(m for m in _reachable(module) if _in(m, "harness.drivers.local") or _in(m, "harness.drivers.adb")
                     or _in(m, "harness.drivers.ssh"))
    assert not reached, f"{module} reaches {reached}"
