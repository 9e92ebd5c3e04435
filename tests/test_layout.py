"""The package's shape: no import cycle between the modules of jtd3/, and modules that fit on a screen or two.

Both checks read the source with ``ast`` (nothing is imported). An import counts wherever it is written (top
level or inside a function: a lazy import is still a dependency), except under ``if TYPE_CHECKING:`` (never runs)
and ``if __name__ == "__main__":`` (runs only when the module is the program, so it is not imported by the
module it imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jtd3"

MAX_LINES = 600

# Modules allowed over MAX_LINES, with the reason. A module may also say why in a comment that contains
# "layout: long because" (or in the first line of its docstring).
LONG_MODULES = {
    "jtd3.train": "one class, the loop (Trainer); its parts (config, exploration, seeds, resume) are in jtd3/training/",
    "jtd3.backends.carla.session": "one class, CarlaSession; its parts (config, errors, probe, sensors, client "
    "helpers, server process) are separate modules",
    "jtd3.replay": "one class, the replay buffer, and its save / load format",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _skipped_block(node: ast.If) -> bool:
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The jtd3 modules that module ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _skipped_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative DFS with colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in sorted(graph):
        if colour[root] != white:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = grey
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = black
                stack.pop()
                path.pop()
            elif colour[child] == grey:
                return path[path.index(child):] + [child]
            elif colour[child] == white:
                colour[child] = grey
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_fit_on_a_screen_or_two():
    too_long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= MAX_LINES or name in LONG_MODULES or "layout: long because" in text:
            continue
        too_long.append(f"{name} ({lines} lines)")
    assert not too_long, (
        f"modules over {MAX_LINES} lines without a reason (split them, or say why in LONG_MODULES or in a "
        f"'layout: long because ...' comment): {', '.join(too_long)}"
    )


def test_the_long_module_list_is_current():
    mods = modules()
    stale = [n for n in LONG_MODULES if n not in mods or mods[n].read_text(encoding="utf-8").count("\n") <= MAX_LINES]
    assert not stale, f"LONG_MODULES lists modules that are gone or short now: {stale}"
