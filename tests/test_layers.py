"""The package's shape: subpackages in layers, lower layers never import higher ones, and
no import circle between modules (function-level imports included: a lazy import is still
a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import tunewise

PKG = Path(tunewise.__file__).parent
# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS = [
    {"tunewise", "tunewise.errors", "tunewise.atomic", "tunewise.units", "tunewise.records"},
    {"tunewise.data"},
    {"tunewise.train"},
    {"tunewise.search"},
    {"tunewise.study"},
    {"tunewise.config"},
    {"tunewise.phases"},
    {"tunewise.report"},
    {"tunewise.params", "tunewise.notebook", "tunewise.execute", "tunewise.cli", "tunewise.__main__"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every tunewise module `path` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tunewise")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunewise") and node.level == 0:
            for a in node.names:  # `from tunewise.study import runner` imports the module runner
                full = f"{node.module}.{a.name}"
                out.add(full if (PKG.parent / (full.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use absolute `from tunewise.... import`")
    return out


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "tunewise") or module in names:
            return i
    raise AssertionError(f"{module}: not in any layer of this test; add it to LAYERS")


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def test_every_module_sits_in_a_layer_and_imports_only_its_own_or_lower_layers():
    upward = [
        f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})"
        for mod, deps in graph().items()
        for dep in deps
        if dep != "tunewise" and layer(dep) > layer(mod)
    ]
    assert upward == []


def test_no_import_circle():
    g = graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d == "tunewise" or d not in g:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert cycles == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: an upward import in a module is found."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from tunewise.notebook import resolve\n")
    assert "tunewise.notebook" in imports(fake)
    assert layer("tunewise.notebook") > layer("tunewise.data.cache")
