#!/usr/bin/env bash
# Install fastjob into .venv and run the demo: a jobserver of 3 slots limits
# 12 real subprocesses, and a child `make -j` shares the same budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
python examples/demo.py "$@"
