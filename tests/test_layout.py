"""The one-way flow of docs/design.md, checked over the package's own imports (ast, nothing run).

One ordered list of layers; a module may import its own layer or an earlier one, never a later
one. Every import counts: at module level, inside a function (a lazy import is still a
dependency) and under `if TYPE_CHECKING:` (a type the module names is one it depends on).
A few named exceptions, each with its reason, are allowed; an exception no import needs any
more fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"

# Earliest first. A module belongs to the layer holding the longest of its prefixes; the
# package's own `harness` (its version) is base, exactly.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("harness", "harness.records", "harness.errors", "harness.hashing", "harness.paths", "harness.credentials",
              "harness.stats", "harness.signals")),
    ("boards", ("harness.boards",)),
    ("drivers", ("harness.drivers",)),
    ("runtimes", ("harness.runtimes",)),
    ("telemetry", ("harness.telemetry",)),
    ("engines", ("harness.engines",)),
    ("plan", ("harness.plan",)),
    ("store", ("harness.store",)),
    ("run", ("harness.run",)),
    ("analysis", ("harness.analysis",)),
    ("report", ("harness.report",)),
    ("lab", ("harness.lab",)),
    ("cli", ("harness.cli", "harness.__main__")),
)

# (importer, imported) -> why this one import may point up the order. At most five.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every harness module a file imports, wherever the import stands (a `from pkg import name`
    counts pkg.name when that is a module of the package, else pkg)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "harness" or a.name.startswith("harness."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "harness" or node.module.startswith("harness.")):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer holding `module`, or None where none does."""
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "harness" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def upward_imports() -> list[tuple[str, str]]:
    """Every (importer, imported) where imported sits in a later layer than importer."""
    return sorted((module, target) for module, targets in GRAPH.items() for target in targets
                  if (layer_of(target) or 0) > (layer_of(module) or 0))


def test_the_graph_is_read():
    """Guards the checks below against passing on an empty graph."""
    assert "harness.engines" in GRAPH["harness.run.runner"]
    assert "harness.records" in GRAPH["harness.engines.llamabench"]
    assert "harness.drivers.base" in GRAPH["harness.telemetry.base"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
    """A new package takes its place in the order here (and in docs/design.md) first."""
    assert layer_of(module) is not None, f"{module} is in no layer of tests/test_layout.py LAYERS"


def test_records_is_a_leaf():
    """The records every layer shares import nothing of ours, so sharing them makes no circle."""
    assert GRAPH["harness.records"] == set(), f"harness.records imports {sorted(GRAPH['harness.records'])}"


def test_no_module_imports_a_later_layer():
    names = [name for name, _ in LAYERS]
    wrong = [f"{module} ({names[layer_of(module) or 0]}) imports {target} ({names[layer_of(target) or 0]})"
             for module, target in upward_imports() if (module, target) not in ALLOWED]
    assert not wrong, "imports against the order " + " -> ".join(names) + ":\n  " + "\n  ".join(wrong)


def test_the_exceptions_are_few_named_and_still_needed():
    assert len(ALLOWED) <= 5, "at most five exceptions to the order"
    assert all(reason.strip() for reason in ALLOWED.values()), "every exception says why"
    stale = sorted(set(ALLOWED) - set(upward_imports()))
    assert not stale, f"exceptions no import needs any more (remove them): {stale}"


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("harness.analysis", "harness.report"))))
def test_analysis_and_report_never_reach_a_device(module):
    """Analysis reads stored metrics only, and a report is rebuilt with no device attached: the
    order lets them import telemetry's records (a bandwidth figure), never a concrete driver."""
    reached = sorted(m for m in _reachable(module) if m in ("harness.drivers.local", "harness.drivers.adb", "harness.drivers.ssh"))
    assert not reached, f"{module} reaches {reached}"


def test_no_circle_between_packages():
    """Implied by the order, but said outright: the allowed exceptions must not close a circle."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges = {(package(m), package(t)) for m, targets in GRAPH.items() for t in targets if package(m) != package(t)}
    reach: dict[str, set[str]] = {}
    for a, b in edges:
        reach.setdefault(a, set()).add(b)
    changed = True
    while changed:
        changed = False
        for a in list(reach):
            more = set().union(*(reach.get(b, set()) for b in reach[a])) - reach[a]
            if more:
                reach[a] |= more
                changed = True
    circles = sorted(a for a in reach if a in reach[a])
    assert not circles, f"packages that reach themselves through others: {circles}"
