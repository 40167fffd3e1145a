"""The layout a newcomer can walk (README "Layout"): data -> models -> soap -> scripts with no
upward arrow, no import circle, no module that nothing imports or runs, no file over ~400
lines. Imports are read from the source (every ``import``, also inside functions), so the
check needs no import side effects."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data", "models", "soap", "scripts")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or the package it is in)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # ``from pkg import sub`` imports the submodule when there is one
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found |= {m for n in names if (m := _resolve(n)) and m != module}
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    return PACKAGES.index(module.split(".")[0])


def test_arrows_point_down_the_folders():
    """data -> models -> soap -> scripts (``soap`` imports torch alone: the installed package);
    inside scripts, only the experiment drivers (and the commands) reach the others' code."""
    up = [(m, d) for m, deps in GRAPH.items() for d in deps if _layer(d) > _layer(m)]
    assert not up, up
    soap_out = [(m, d) for m, deps in GRAPH.items() if m.startswith("soap") for d in deps]
    assert all(d.startswith("soap") for _, d in soap_out), soap_out
    lower = ("scripts.trainer", "scripts.report", "scripts.bench")
    into_drivers = [
        (m, d)
        for m, deps in GRAPH.items()
        if m.startswith(lower)
        for d in deps
        if d.startswith("scripts.experiments")
    ]
    assert not into_drivers, into_drivers


def test_no_import_circles():
    """A package's ``__init__`` importing its own modules is not a circle (Python resolves
    it); any other cycle is."""

    def edges(m: str) -> set[str]:
        return {d for d in GRAPH[m] if not m.startswith(d + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def test_every_module_is_imported_or_run():
    """Dead modules go: each is imported by another, is a package, is a command
    (``python -m ...``: it has a ``__main__`` guard), or is named by a config's ``_target_``
    (configs are constructor calls)."""
    imported = {d for deps in GRAPH.values() for d in deps}
    for y in (ROOT / "configs").rglob("*.yaml"):
        for target in re.findall(r"_target_:\s*([\w.]+)", y.read_text()):
            imported.add(target.rpartition(".")[0])
    tests = {
        d
        for t in (ROOT / "tests").glob("*.py")
        for n in ast.walk(ast.parse(t.read_text()))
        if isinstance(n, ast.ImportFrom) and n.module
        for d in [_resolve(n.module)]
        if d
    }
    dead = [
        m
        for m, p in MODULES.items()
        if m not in imported
        and p.name not in ("__init__.py", "__main__.py")
        and 'if __name__ == "__main__"' not in p.read_text()
    ]
    assert not dead, f"imported by nothing: {dead} (tests import {sorted(set(dead) & tests)})"


def test_files_fit_in_a_head():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
