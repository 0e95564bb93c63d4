#!/usr/bin/env bash
# The whole test suite: lint, then pytest (backend on the CPU at tiny sizes, protocol, server, the add-on under
# real bpy). Extra arguments go to pytest. Exits non-zero on any failure, and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-bpy42
.venv/bin/ruff check .
# The whole suite under the newest Blender (bpy 5.0), then the add-on's tests again under Blender 4.2 LTS.
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ]; then
    echo "=== add-on tests under Blender 4.2 LTS ===" >&2
    .venv-bpy42/bin/python -m pytest -p no:cacheprovider tests/addon
fi
