#!/usr/bin/env bash
# The whole test suite: lint; the backend, protocol and server tests (.venv: CPython 3.11, torch, CPU at tiny
# sizes); the add-on's tests under real Blender in two lanes: Blender 5.2 LTS on CPython 3.13 (.venv-bpy52, the
# main add-on lane) and Blender 4.2 LTS on CPython 3.11 (.venv-bpy42); and the extension zip's install check
# under the main job's Blender 5.0 (.venv). Extra arguments go to one pytest run under .venv instead.
# Exits non-zero on any failure, and when a lane ran no test or did not get its Blender.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-addon-lanes
.venv/bin/ruff check .

if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

# lane NAME VENV BLENDER_MAJOR_MINOR PYTEST_ARGS...: run pytest under VENV, after checking that VENV's bpy is
# that Blender (else every bpy test would skip and the lane would pass without testing anything).
lane() {
    local name=$1 venv=$2 blender=$3 rc=0
    shift 3
    echo "=== $name ===" >&2
    "$venv/bin/python" -c "import bpy, sys; v = '%d.%d' % bpy.app.version[:2]; print('bpy', bpy.app.version_string,
        'on Python', sys.version.split()[0]); raise SystemExit(v != '$blender' and f'expected Blender $blender, got {v}')" \
        || { echo "error: $venv has no Blender $blender (bpy); run bash scripts/bootstrap.sh --with-addon-lanes" >&2; exit 1; }
    "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "error: the $name lane collected no tests" >&2
    fi
    [ "$rc" -eq 0 ] || exit "$rc"
}

lane "backend, protocol, server and main job (Blender 5.0, CPython 3.11, torch)" .venv 5.0 --ignore=tests/addon
lane "add-on under Blender 5.2 LTS (CPython 3.13), the main add-on lane" .venv-bpy52 5.2 tests/addon
lane "add-on under Blender 4.2 LTS (CPython 3.11)" .venv-bpy42 4.2 tests/addon
# The main job's Blender: only the zip's install check (the add-on's API differences are covered by 4.2 and 5.2).
lane "extension zip under Blender 5.0 (CPython 3.11)" .venv 5.0 tests/addon/test_zip_install.py
