"""No import circle: a module imports only its own layer or lower ones, also
inside functions (every import statement of every module, from the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "fastjob"

# DESIGN.md, bottom to top (a module may import its own layer and below).
LAYERS: list[tuple[str, ...]] = [
    ("fastjob._errors", "fastjob._version", "fastjob._statistics", "fastjob._service_thread"),
    ("fastjob._io_py", "fastjob._io", "_fastjob"),
    ("fastjob._makeflags",),
    ("fastjob._backend",),
    ("fastjob._core",),
    ("fastjob._waiting",),
    ("fastjob.client", "fastjob._reader"),
    ("fastjob._pool_size", "fastjob._governor", "fastjob._control"),
    ("fastjob.server",),
    ("fastjob._discovery",),
    ("fastjob._slot", "fastjob._spawn"),
    ("fastjob.process",),
    ("fastjob.group",),
    ("fastjob.trace",),
    ("fastjob.cli",),
    ("fastjob", "fastjob.__main__"),
]


def rank(module: str) -> int:
    best = -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "fastjob" and module.startswith(name + ".")):
                best = i
    if best < 0 and module == "fastjob.__init__":
        return len(LAYERS) - 1
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every fastjob import in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or mod == "fastjob":
                # "from . import x": each name may be a module
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return [(line, m) for line, m in out if m == "_fastjob" or m.split(".")[0] == "fastjob"]


def test_every_module_has_a_layer() -> None:
    for path in PKG.rglob("*.py"):
        assert rank(module_name(path)) >= 0, f"{module_name(path)} is in no layer: add it to LAYERS"


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        for line, mod in imports(path):
            r = rank(mod)
            if r < 0:
                # "from . import name" of a non-module name: rank its package
                r = rank(mod.rpartition(".")[0])
            if r > rank(me):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} imports {mod}")
    assert bad == []


@pytest.mark.parametrize("mod,expected", [("fastjob._core.token", 4), ("fastjob._waiting", 5), ("fastjob.cli.run", 14)])
def test_rank(mod: str, expected: int) -> None:
    assert rank(mod) == expected
