"""Install a built extension zip into a throw-away Blender user profile with Blender's own installer, enable it
and report what happened, as one JSON line on stdout.

    BLENDER_USER_RESOURCES=/tmp/x <bpy python> tests/addon/zip_install_probe.py dist/nerfart_blender-0.1.0.zip

Run by ``test_zip_install.py`` in a fresh process (Blender reads ``BLENDER_USER_RESOURCES`` once, when ``bpy`` is
imported, and an installed extension cannot be unloaded cleanly). It refuses to run without
``BLENDER_USER_RESOURCES`` so it never touches a real user profile.

The test environment's own pyzmq is hidden from ``import zmq`` (a meta-path finder that searches ``sys.path``
without the environment's site-packages), so the add-on can only find the pyzmq Blender installed from the
zip's wheels; the report says where ``zmq`` was imported from.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
import sysconfig
from pathlib import Path

EXT_ID = "nerfart_blender"
MODULE = f"bl_ext.user_default.{EXT_ID}"


class _HideEnvironmentZmq:
    """Finds ``zmq`` on ``sys.path`` minus this Python's own site-packages (where the test venv's pyzmq is)."""

    def __init__(self, hidden: set[str]) -> None:
        self.hidden = hidden

    def find_spec(self, name, path=None, target=None):
        if name != "zmq":
            return None  # submodules follow the package's own __path__
        search = [p for p in sys.path if os.path.realpath(p or ".") not in self.hidden]
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        # Returning a spec for a missing zmq is not possible: raise so the venv's copy is never the fallback.
        if spec is None:
            raise ModuleNotFoundError("No module named 'zmq' outside the test environment", name=name)
        return spec


def main(zip_path: str) -> dict:
    if not os.environ.get("BLENDER_USER_RESOURCES"):
        raise SystemExit("set BLENDER_USER_RESOURCES to a temporary folder first")
    env_site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    sys.meta_path.insert(0, _HideEnvironmentZmq(env_site))
    import bpy

    addon_utils = importlib.import_module("addon_utils")  # on sys.path once bpy is imported

    report: dict = {"blender": bpy.app.version_string, "python": "{}.{}".format(*sys.version_info[:2])}
    log: list[str] = []
    try:
        result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                         enable_on_install=True)
        report["install_result"] = sorted(result)
    except RuntimeError as exc:  # the operator's ERROR reports arrive as RuntimeError in background mode
        report["install_result"] = ["ERROR"]
        log.append(str(exc))
    report["log"] = log
    _default, loaded = addon_utils.check(MODULE)
    report["enabled"] = bool(loaded) and MODULE in bpy.context.preferences.addons
    wheel_dir = Path(bpy.utils.user_resource("EXTENSIONS", path=".local")).resolve()
    report["wheel_dir"] = str(wheel_dir)
    report["installed_wheels"] = sorted(p.name for p in wheel_dir.glob("lib/python*/site-packages/*.dist-info"))
    try:
        import zmq

        report["zmq_file"] = str(Path(zmq.__file__).resolve())
        report["zmq_version"] = zmq.pyzmq_version()
        report["zmq_from_extension"] = Path(zmq.__file__).resolve().is_relative_to(wheel_dir)
    except ImportError as exc:
        report["zmq_error"] = str(exc)
        report["zmq_from_extension"] = False
    report["operators"] = sorted(name for name in dir(bpy.ops.nerfart)) if report["enabled"] else []
    report["has_panel"] = hasattr(bpy.types, "NERFART_PT_main")
    return report


if __name__ == "__main__":
    print(json.dumps(main(os.path.abspath(sys.argv[1]))))
