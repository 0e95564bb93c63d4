#!/usr/bin/env bash
# The whole test suite: lint, then pytest (backend on the CPU at tiny sizes, protocol, server, the add-on under
# real bpy). Extra arguments go to pytest. Exits non-zero on any failure, and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
