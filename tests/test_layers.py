"""The import graph between the top-level packages runs one way (README, Architecture):

    workflows (the front door: CLI verbs, the pipeline, the extraction and batch jobs)
        -> tune, serve
            -> glue (what tune and serve share: Ray Train, MLflow, Ray runtime, console, errors)
                -> avarnet (the pure library)

Every import of every module is read (the ones inside functions too, where the heavy
imports live), so a new upward arrow or a circle fails here, naming the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> the project packages it may import (besides itself)
ALLOWED = {
    "avarnet": set(),
    "glue": {"avarnet"},
    "tune": {"avarnet", "glue"},
    "serve": {"avarnet", "glue"},
    "workflows": {"avarnet", "glue", "tune", "serve"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, top in _imports(path):
                if top in ALLOWED and top != package:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    edges.setdefault((package, top), []).append(where)
    return edges


def test_imports_between_packages_only_go_down():
    wrong = {f"{a} -> {b}": sites for (a, b), sites in _edges().items() if b not in ALLOWED[a]}
    assert not wrong, f"upward or sideways imports: {wrong}"


def test_the_package_graph_has_no_circle():
    graph: dict[str, set[str]] = {p: set() for p in ALLOWED}
    for a, b in _edges():
        graph[a].add(b)

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start]
        )

    circles = [p for p in graph if reaches(p, p)]
    assert not circles, f"packages on a circle: {circles} ({graph})"


def test_the_front_door_is_the_only_code_above_tune_and_serve():
    users = {a for (a, b) in _edges() if b in ("tune", "serve")}
    assert users <= {"workflows"}, users
