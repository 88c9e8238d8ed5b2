"""The rooms of the code and what each may import: no circle anywhere, and every import goes down the stairs.

Read from the source with ``ast``: every import counts, those inside functions and under
TYPE_CHECKING too. docs/architecture.md explains the rooms; this test keeps them so.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workers", "tui", "benchmarks")

LEVELS: list[tuple[str, int]] = [
    ("workers", 0),
    ("tui.text", 1),
    ("tui.model", 2),
    ("tui.engine", 3),
    ("tui.teaching", 4),
    ("tui.view", 5),
    ("tui.launch", 6),
    ("tui.cli", 6),
    ("tui.__main__", 6),
    ("tui", 6),
    ("benchmarks", 7),
]
"""Each room and its floor: a module imports only from its own floor or below."""

PURE = ("workers.protocol", "tui.model", "tui.text")
"""Stdlib only (and each other's modules): fast to test, replayable, readable."""
PURE_NEIGHBOURS = ("workers.protocol", "workers.settings", *PURE)
"""What a pure module may import of the project: the protocol, the settings (modes), and the pure rooms."""
THIRD_PARTY = {"textual", "rich", "pika", "pytest"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The project modules and the top-level third-party packages ``name`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES:
                out.add(target)
            elif target.split(".")[0] in THIRD_PARTY:
                out.add(target.split(".")[0])
    out.discard(name)
    return out


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def level(module: str) -> int:
    for prefix, floor in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return floor
    raise AssertionError(f"{module} is in no room: add it to LEVELS and docs/architecture.md")


def test_every_module_is_in_a_room() -> None:
    for name in MODULES:
        level(name)


def test_no_import_circle_anywhere() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in GRAPH[node]:
            if other not in GRAPH:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert circles == [], f"import circles: {circles}"


def test_imports_go_down_the_stairs_only() -> None:
    upward = [
        f"{name} (floor {level(name)}) imports {other} (floor {level(other)})"
        for name, targets in GRAPH.items()
        for other in targets
        if other in MODULES and level(other) > level(name)
    ]
    assert upward == []


@pytest.mark.parametrize("room", PURE)
def test_the_model_and_the_protocol_use_the_standard_library_only(room: str) -> None:
    for name, targets in GRAPH.items():
        if name == room or name.startswith(room + "."):
            outside = {t for t in targets if t in THIRD_PARTY}
            allowed = {
                t for t in targets if t in MODULES and t.startswith(("workers.protocol", "workers.settings", *PURE))
            }
            assert not outside, f"{name} imports {outside}"
            assert targets - outside - allowed == set(), f"{name} imports {targets - allowed}"


def test_workers_never_import_tui_and_the_engine_never_imports_textual() -> None:
    for name, targets in GRAPH.items():
        if name.startswith("workers"):
            assert not any(t.startswith("tui") for t in targets), name
        if name.startswith(("tui.engine", "tui.model", "tui.teaching")):
            assert "textual" not in targets, f"{name} imports textual"
