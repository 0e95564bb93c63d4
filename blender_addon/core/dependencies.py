"""What to tell the user when a Python package the add-on needs is missing from Blender's Python.

Official Blender builds ship numpy, and the extension zip carries pyzmq wheels for every Python the supported
Blender versions embed; but a Linux distribution's Blender runs on the system Python, which may lack either.
Then "reinstall the add-on" does not help: the message names the package and the Python to install it into.
"""

from __future__ import annotations

import importlib
import sys

# module imported -> (package on PyPI, Linux distribution package), for the packages the add-on imports.
PACKAGES = {"numpy": ("numpy", "python3-numpy"), "zmq": ("pyzmq", "python3-zmq")}


def missing_module_message(module: str, needed_for: str) -> str:
    """A sentence naming the package that provides ``module`` and how to install it into this Python."""
    package, distro_package = PACKAGES.get(module, (module, f"python3-{module}"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = sys.executable or "python3"
    return (f"{needed_for} needs the Python package '{package}' (module '{module}'), which this Blender's Python "
            f"{version} does not have. Install it for that Python, e.g. \"{python}\" -m pip install {package} "
            f"(or your Linux distribution's {distro_package} package), then restart Blender")


def import_problem(module: str, needed_for: str) -> str | None:
    """None when ``module`` imports, else :func:`missing_module_message` for it."""
    try:
        importlib.import_module(module)
    except ImportError:
        return missing_module_message(module, needed_for)
    return None
