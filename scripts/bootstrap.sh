#!/usr/bin/env bash
# Create (or reuse) the project's .venv with the pinned requirements. Idempotent and quick when nothing changed:
# a hash of requirements.txt is stamped into the venv, and pip runs only when it differs.
set -euo pipefail
cd "$(dirname "$0")/.."

# bpy (real Blender as a module) exists for CPython 3.11 only, so the venv must be 3.11.
pick_python() {
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "error: Python 3.11 is needed (bpy, Blender as a Python module, is built for 3.11 only)." >&2
    echo "       Install it (e.g. apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11." >&2
    return 1
}

# ensure_venv DIR REQUIREMENTS: create DIR if needed and install REQUIREMENTS when they changed.
ensure_venv() {
    local dir=$1 req=$2
    if [ ! -x "$dir/bin/python" ]; then
        local py
        py=$(pick_python)
        echo "Creating $dir with $py ..." >&2
        "$py" -m venv "$dir"
    fi
    local want
    want=$(sha256sum "$req" | cut -d' ' -f1)
    if [ "$(cat "$dir/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
        echo "Installing $req into $dir (first run: a minute or two) ..." >&2
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
        echo "$want" > "$dir/.requirements.sha256"
    fi
}

ensure_venv .venv requirements.txt
# The add-on is also tested under Blender 4.2 LTS (--with-bpy42, used by the test command).
if [ "${1:-}" = "--with-bpy42" ]; then
    ensure_venv .venv-bpy42 requirements-bpy42.txt
fi
