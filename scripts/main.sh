#!/usr/bin/env bash
# The main job: an embedded default capture -> reconstruct -> stylize -> frames and a mesh in a Blender scene.
# Extra arguments go to `python -m backend demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m backend demo "$@"
