"""The package's layout rules, checked on every run: no import circles between modules, and the core
(the modules at the top of kdrl_mini/) never imports a room that sits above it."""

import ast
from pathlib import Path

import kdrl_mini

PACKAGE = Path(kdrl_mini.__file__).parent
ABOVE_THE_CORE = {"world", "study", "gpu", "real", "lessons", "integrations"}  # rooms that import the core
ENTRY_POINTS = {"kdrl_mini.cli", "kdrl_mini.__main__"}  # the command line reaches every room
OPTIONAL = {"kdrl_mini.engines": {"kdrl_mini.integrations.trl.kit_run",  # imported in a function, TRL optional
                                   "kdrl_mini.integrations.trl.launch"}}  # engines.check: what TRL refuses


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path) -> set[str]:
    """The kdrl_mini modules ``path`` imports (relative imports resolved; ``from . import x`` is module x)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kdrl_mini")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.startswith("kdrl_mini"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: (own_imports(p) & set(mods)) - {m} - OPTIONAL.get(m, set()) for m, p in mods.items()}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or [] (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_circles():
    assert cycle(graph()) == []


def test_the_check_finds_a_planted_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_core_imports_no_room_above_it():
    bad = {m: sorted(n for n in deps if set(n.split(".")[1:2]) & ABOVE_THE_CORE)
           for m, deps in graph().items() if m.count(".") == 1 and m not in ENTRY_POINTS}
    assert {m: d for m, d in bad.items() if d} == {}
