"""The house (issue 20, ARCHITECTURE.md): no import circle among the project's own modules,
tasks/ holds only stages and every stage is reachable from the task table by plain imports, and
the lower rooms never import an upper one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("xfergan", "datamodules", "lightning_modules", "tasks")
# a room may import only rooms on its own floor or below
FLOOR = {"xfergan": 1, "datamodules": 2, "lightning_modules": 2, "tasks": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(f: Path, name: str, known: set[str]) -> set[str]:
    """Own modules `f` imports (at any depth of the file: lazy imports count too)."""
    found = set()
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for c in cands:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(f, m, known) for m, f in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own submodules (its __init__ re-exporting them)
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if state.get(n) is None and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if state.get(m) is None and (c := visit(m)):
            return c
    return None


def test_no_import_circle_among_our_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_room_imports_a_room_above_it():
    up = [
        (m, n)
        for m, deps in _graph().items()
        for n in deps
        if FLOOR[n.split(".")[0]] > FLOOR[m.split(".")[0]]
    ]
    assert not up, up


def test_tasks_holds_only_stages_each_in_the_task_table():
    import tasks

    stages = {p.stem for p in (ROOT / "tasks").glob("*.py") if p.stem != "__init__"}
    assert stages == set(tasks.TASKS), stages ^ set(tasks.TASKS)
    for name, fn in tasks.TASKS.items():
        assert fn.__module__ == f"tasks.{name}" and fn.__name__ == "run"
    assert not [p for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"]


if __name__ == "__main__":  # python tests/test_architecture.py: the import map, room by room
    for mod, deps in sorted(_graph().items()):
        print(f"{mod:34} -> {', '.join(sorted(deps)) or '-'}")
