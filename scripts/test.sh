#!/usr/bin/env bash
# Install fastjob with its test tools into .venv and run the whole suite twice:
# against the native extension and against the pure-Python fallback.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
python -c 'import fastjob, sys; sys.exit(0 if fastjob.NATIVE else "native extension was not built")'
echo "== test suite, native extension"
python -m pytest -q "$@"
echo "== test suite, pure-Python fallback (FASTJOB_NO_EXTENSIONS=1)"
FASTJOB_NO_EXTENSIONS=1 python -m pytest -q "$@"
