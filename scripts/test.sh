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

# The backend lane keeps torch to one thread (tests/conftest.py), so the lanes share the two cores of a CI
# machine side by side. The backend's tests split by their `slow` mark into two halves of the work: the slow
# half (then the zip check, the same Blender's user folders) runs in the background from the start, and the
# add-on lanes then the backend's quick half and the main job's, the soak's and the Triton interpreter's slow
# tests (about three minutes, which evens the two sides out) run in the foreground, so that neither core idles while the other finishes alone. The background
# lanes' output is shown whole when they end. Each side runs in a subshell, so a failure in one never leaves
# the other running unwaited.
# Every lane builds the extension zip; fill the shared pyzmq wheel cache (.whl/) once, before the lanes run side
# by side, so that no two builds download into it at the same time.
.venv/bin/python -c "import build_addon as ba; ba.fetch_wheels(ba.ALL_PLATFORMS, ba.ROOT / '.whl', offline=False)"
# The fused kernels' runs in Triton's interpreter (about a minute in all) go to the foreground too, which
# evens the two sides out on a quiet machine (measured: 12:12 against 10:28 without them).
INTERPRETER_TESTS=triton_interpreter
INTERPRETER_FILES=(tests/test_exr_passes.py tests/test_subject_render.py tests/test_fused_field.py)
logs=$(mktemp -d)
(
    lane "backend, protocol and server: slow tests (Blender 5.0, CPython 3.11, torch)" .venv 5.0 \
        --ignore=tests/addon --ignore=tests/test_main_job.py --ignore=tests/test_soak.py -m slow \
        -k "not $INTERPRETER_TESTS"
    # The main job's Blender: only the zip's install check (the add-on's API differences are covered by 4.2/5.2).
    lane "extension zip under Blender 5.0 (CPython 3.11)" .venv 5.0 tests/addon/test_zip_install.py
) > "$logs/backend.log" 2>&1 &
backend_pid=$!
fore_rc=0
(
    lane "add-on under Blender 5.2 LTS (CPython 3.13), the main add-on lane" .venv-bpy52 5.2 tests/addon
    # The add-on against a two-worker Ray backend runs in the main lane only: the backend side (a Ray cluster,
    # most of its minute) is the same under either Blender, and the 4.2 lane keeps the plain backend's end to end.
    lane "add-on under Blender 4.2 LTS (CPython 3.11)" .venv-bpy42 4.2 tests/addon \
        --ignore=tests/addon/test_e2e_cluster_backend.py
    lane "backend, protocol, server and main job: the other tests" .venv 5.0 --ignore=tests/addon -m "not slow"
    lane "the main job's, the soak's and the Triton interpreter's slow tests" .venv 5.0 tests/test_main_job.py \
        tests/test_soak.py "${INTERPRETER_FILES[@]}" -m slow -k "main_job or soak or $INTERPRETER_TESTS"
) || fore_rc=$?
backend_rc=0
wait "$backend_pid" || backend_rc=$?
cat "$logs/backend.log"
rm -rf "$logs"
echo "add-on lanes and the backend's quick tests: exit $fore_rc; backend's slow tests and zip check: exit $backend_rc" >&2
[ "$fore_rc" -eq 0 ] && [ "$backend_rc" -eq 0 ]
