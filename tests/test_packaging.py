"""Packaging: the stub matches the extension, typing markers and the version
are installed, the fallback is selectable, the wheel matrix is configured.

These run against whatever ``import fastjob`` finds: the editable source tree
in CI's first two runs, the installed wheel / sdist in scripts/check_wheel.sh.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import fastjob

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
IN_SOURCE_TREE = (ROOT / "src" / "fastjob").is_dir()


def _native() -> ModuleType:
    if not fastjob.NATIVE:
        pytest.skip("the native extension is not in use (pure-Python install or forced)")
    return importlib.import_module("_fastjob")


def _stub_path(mod: ModuleType) -> Path:
    assert mod.__file__ is not None
    return Path(mod.__file__).with_name("_fastjob.pyi")


Params = list[tuple[str, str, Any]]


def _params(node: ast.FunctionDef) -> Params:
    a = node.args
    assert not (a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs), node.name
    defaults: list[Any] = [inspect.Parameter.empty] * (len(a.args) - len(a.defaults))
    defaults += [ast.literal_eval(d) for d in a.defaults]
    return [(arg.arg, "POSITIONAL_OR_KEYWORD", d) for arg, d in zip(a.args, defaults)]


def _stub_api(body: list[ast.stmt]) -> tuple[dict[str, Params], set[str], dict[str, Any]]:
    """The stub's functions (name -> params), attributes (constants and
    properties) and classes (name -> their own (functions, attributes))."""
    functions: dict[str, Params] = {}
    attributes: set[str] = set()
    classes: dict[str, Any] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            if any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                attributes.add(node.name)
            else:
                functions[node.name] = _params(node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attributes.add(node.target.id)
        elif isinstance(node, ast.ClassDef):
            f, a, _ = _stub_api(node.body)
            classes[node.name] = (f, a)
    return functions, attributes, classes


def _public(names: Any) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _same_signature(where: str, real: Any, params: Params) -> None:
    try:
        sig = inspect.signature(real)
    except (ValueError, TypeError):
        return  # a C slot without signature metadata: names were compared
    got = [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]
    assert got == params, where


def test_stub_is_installed_next_to_the_extension() -> None:
    mod = _native()
    assert _stub_path(mod).is_file(), f"no _fastjob.pyi beside {mod.__file__}"


def test_stub_matches_the_extension() -> None:
    """Every public name of _fastjob is in the stub and vice versa, with the
    same parameters (names, kinds, defaults); constants are ints; classes
    have the same public methods and attributes."""
    mod = _native()
    tree = ast.parse(_stub_path(mod).read_text(encoding="utf-8"))
    functions, constants, classes = _stub_api(tree.body)
    public = {n for n in _public(dir(mod)) if not isinstance(getattr(mod, n), ModuleType)}
    assert public == _public(functions) | _public(constants) | _public(classes)
    for name in _public(constants):
        assert type(getattr(mod, name)) is int, name
    for name, params in functions.items():
        _same_signature(name, getattr(mod, name), params)  # private ones too
    for name, (methods, attributes) in classes.items():
        cls = getattr(mod, name)
        assert isinstance(cls, type), name
        own = _public(vars(cls))
        stub_names = _public(methods) | _public(attributes)
        assert own <= stub_names, f"{name}: not in the stub: {sorted(own - stub_names)}"
        for m in _public(methods):
            assert callable(getattr(cls, m, None)), f"{name}.{m} is in the stub only"
            _same_signature(f"{name}.{m}", getattr(cls, m), methods[m])
        for a in _public(attributes):
            assert hasattr(cls, a), f"{name}.{a} is in the stub only"


def test_stub_types_are_what_the_functions_return() -> None:
    mod = _native()
    assert isinstance(mod.AGAIN, int) and isinstance(mod.EOF, int)
    r, w = os.pipe()
    try:
        info = mod.fd_info(r) if sys.platform != "win32" else None
        if info is not None:
            assert isinstance(info, tuple) and len(info) == 6
            assert all(isinstance(x, int) for x in info)
            os.set_blocking(r, False)
            assert isinstance(mod.drain(r, 8), bytes)
    finally:
        os.close(r)
        os.close(w)


def test_py_typed_is_installed() -> None:
    assert fastjob.__file__ is not None
    assert Path(fastjob.__file__).with_name("py.typed").is_file()


def test_version_is_in_one_place() -> None:
    assert fastjob.__version__ == importlib.metadata.version("fastjob")
    if IN_SOURCE_TREE:
        text = PYPROJECT.read_text(encoding="utf-8")
        assert 'dynamic = ["version"]' in text
        assert 'version = { attr = "fastjob._version.__version__" }' in text


def test_changelog_names_the_version() -> None:
    if not IN_SOURCE_TREE:
        pytest.skip("needs the source tree")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {fastjob.__version__}" in changelog


def test_fallback_is_forced_by_the_environment() -> None:
    code = "import fastjob, fastjob._io as io; print(fastjob.NATIVE, io._impl.__name__)"
    env = dict(os.environ, FASTJOB_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["False", "fastjob._io_py"]


# -- the wheel matrix (source tree only) -------------------------------------------
def _pyproject() -> dict[str, Any]:
    if not IN_SOURCE_TREE:
        pytest.skip("needs the source tree")
    tomllib = pytest.importorskip("tomllib")
    with PYPROJECT.open("rb") as fh:
        data: dict[str, Any] = tomllib.load(fh)
    return data


def test_cibuildwheel_configuration() -> None:
    cfg = _pyproject()["tool"]["cibuildwheel"]
    assert cfg["build"] == "cp3*"
    assert cfg["test-sources"] == ["tests", "pyproject.toml"]
    assert any("pytest" in c for c in cfg["test-command"])
    assert cfg["linux"]["archs"] == ["x86_64", "aarch64"]
    assert cfg["macos"]["archs"] == ["x86_64", "arm64"]
    assert cfg["windows"]["archs"] == ["AMD64"]


CIBW = shutil.which("cibuildwheel")


@pytest.mark.skipif(CIBW is None, reason="cibuildwheel is not installed (check_wheel.sh runs it)")
@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", {"cp310-manylinux_x86_64", "cp310-manylinux_aarch64",
                   "cp310-musllinux_x86_64", "cp310-musllinux_aarch64"}),
        ("macos", {"cp310-macosx_x86_64", "cp310-macosx_arm64"}),
        ("windows", {"cp310-win_amd64"}),
    ],
)
def test_cibuildwheel_build_identifiers(platform: str, expected: set[str]) -> None:
    _pyproject()
    assert CIBW is not None
    proc = subprocess.run([CIBW, "--print-build-identifiers", "--platform", platform],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = set(proc.stdout.split())
    assert expected <= ids
    assert not any(i.startswith(("cp38-", "cp39-", "pp")) or "t-" in i for i in ids), ids
