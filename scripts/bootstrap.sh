#!/usr/bin/env bash
# Create (or reuse) the project's .venv with the pinned requirements, and with --with-addon-lanes the add-on's
# test venvs .venv-bpy52 (Blender 5.2 LTS, CPython 3.13) and .venv-bpy42 (Blender 4.2 LTS, CPython 3.11).
# Idempotent and quick when nothing changed: a hash of each requirements file is stamped into its venv, and pip
# runs only when it differs.
set -euo pipefail
cd "$(dirname "$0")/.."

# find_python X.Y OVERRIDE: a working CPython X.Y: $OVERRIDE if set, else pythonX.Y / python3 on PATH, else one
# installed by pyenv ($(pyenv root)/versions/X.Y*/bin, also when the pyenv shim itself points at another
# version). Each candidate is run, so a shim or a wrong version is skipped.
find_python() {
    local want=$1 override=$2 candidate root
    local -a candidates=()
    [ -n "${!override:-}" ] && candidates+=("${!override}")
    candidates+=("python$want" python3)
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for candidate in "$root"/versions/"$want"*/bin/python"$want"; do
        [ -x "$candidate" ] && candidates+=("$candidate")
    done
    for candidate in "${candidates[@]}"; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        # The exact version, and not a free-threaded build (bpy is built for the regular one).
        if "$candidate" -c "import sys, sysconfig; raise SystemExit('%d.%d' % sys.version_info[:2] != '$want'
                            or bool(sysconfig.get_config_var('Py_GIL_DISABLED')))" 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "error: Python $want is needed for $3; none found on PATH (python$want, python3) or under $root/versions." >&2
    echo "       Install it (e.g. apt-get install python$want python$want-venv, or pyenv install $want)" >&2
    echo "       or set $override=/path/to/python$want." >&2
    return 1
}

# ensure_venv DIR REQUIREMENTS PYTHON_VERSION OVERRIDE_VAR WHY: create DIR if needed and install REQUIREMENTS
# when they changed.
ensure_venv() {
    local dir=$1 req=$2
    if [ ! -x "$dir/bin/python" ]; then
        local py
        py=$(find_python "$3" "$4" "$5")
        echo "Creating $dir with $py ..." >&2
        "$py" -m venv "$dir"
    fi
    local want
    want=$(sha256sum "$req" | cut -d' ' -f1)
    if [ "$(cat "$dir/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
        echo "Installing $req into $dir (first run: about a minute) ..." >&2
        if [ -x .venv/bin/uv ]; then
            .venv/bin/uv pip install --quiet --python "$dir/bin/python" -r "$req"
        else
            "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
        fi
        echo "$want" > "$dir/.requirements.sha256"
    fi
}

# uv installs the requirements: it downloads in parallel and does not byte-compile every module it unpacks, which
# is most of a fresh install's time with pip (torch's CUDA build and its libraries are several GB). It goes into
# .venv (requirements.txt pins the same version, so the install keeps it); without it (no index reachable for it)
# pip installs instead.
MAIN_WHY="the main environment (bpy 5.0, Blender as a Python module)"
if [ ! -x .venv/bin/uv ]; then
    if [ ! -x .venv/bin/python ]; then
        py=$(find_python 3.11 PYTHON "$MAIN_WHY")
        echo "Creating .venv with $py ..." >&2
        "$py" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(sed -n 's/^uv==//p' requirements.txt)" \
        || echo "note: uv could not be installed; pip installs the requirements (slower)" >&2
fi
# The main environment: backend (torch) and the main job's Blender 5.0 (bpy 5.0 is built for CPython 3.11).
ensure_venv .venv requirements.txt 3.11 PYTHON "$MAIN_WHY"
# The add-on's test lanes (used by the test command): Blender 5.2 LTS on CPython 3.13 (the main add-on lane)
# and Blender 4.2 LTS on CPython 3.11 (the oldest Blender we support).
case "${1:-}" in
    --with-addon-lanes | --with-bpy42)
        ensure_venv .venv-bpy52 requirements-bpy52.txt 3.13 PYTHON313 "the Blender 5.2 LTS test lane (bpy 5.2)"
        ensure_venv .venv-bpy42 requirements-bpy42.txt 3.11 PYTHON "the Blender 4.2 LTS test lane (bpy 4.2)"
        ;;
esac
