"""Shared fixtures for the add-on tests.

The repository root goes on ``sys.path`` so that ``blender_addon`` (and the ``protocol`` package it ships)
import as packages. Tests that need Blender import ``bpy`` through the ``bpy`` fixture and are skipped with a
reason when the ``bpy`` module is not installed, so the ``core/`` tests run on any Python.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
from waits import HANG_S  # tests/waits.py: tests/ is on sys.path through tests/conftest.py

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path("/work/shared/data")
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

HAS_BPY = importlib.util.find_spec("bpy") is not None
requires_bpy = pytest.mark.skipif(not HAS_BPY, reason="the bpy module (Blender as a Python module) is not installed")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def lego_dir() -> Path:
    d = DATA / "lego_half_res"
    if not (d / "transforms_train.json").is_file():
        pytest.skip(f"test capture {d} is not available")
    return d


@pytest.fixture(scope="session")
def fangzhou_dir() -> Path:
    d = DATA / "fangzhou_nature"
    if not (d / "cameras.npz").is_file():
        pytest.skip(f"test capture {d} is not available")
    return d


@pytest.fixture(scope="session")
def staged_addon(tmp_path_factory) -> Path:
    """The add-on laid out as in the built zip (``nerfart_blender/`` with ``protocol/`` inside), on sys.path.

    Uses ``build_addon.stage`` itself, so the tests import exactly what the zip would contain (minus wheels;
    pyzmq comes from the test environment).
    """
    import build_addon

    root = tmp_path_factory.mktemp("staged")
    build_addon.stage(root / "nerfart_blender", ("linux-x64",), [])
    sys.path.insert(0, str(root))
    return root / "nerfart_blender"


@pytest.fixture(scope="session")
def addon(staged_addon):
    """The staged add-on enabled through Blender's add-on system (so its preferences exist)."""
    bpy = pytest.importorskip("bpy")
    import addon_utils

    mod = addon_utils.enable("nerfart_blender", default_set=True, handle_error=_raise)
    assert mod is not None and hasattr(bpy.types, "NERFART_PT_main")
    yield mod
    addon_utils.disable("nerfart_blender", default_set=True, handle_error=_raise)


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.fixture()
def fresh_file(addon):
    """An empty file with the add-on still enabled (read_homefile keeps preferences)."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    addon.connection.disconnect()
    addon.connection.session.__init__()
    return bpy.context.scene


@pytest.fixture()
def stub():
    """A scripted backend (:class:`stub_backend.StubBackend`) on a free loopback port."""
    pytest.importorskip("zmq")
    from stub_backend import StubBackend

    s = StubBackend()
    yield s
    s.close()


@pytest.fixture()
def connected(addon, fresh_file, stub):
    """The add-on connected to ``stub`` through its Connect operator (background mode waits for the answer)."""
    import bpy

    prefs = bpy.context.preferences.addons["nerfart_blender"].preferences
    prefs.endpoint = stub.endpoint
    prefs.timeout_s = 4.0
    assert bpy.ops.nerfart.connect() == {"FINISHED"}
    yield addon
    addon.connection.disconnect()
    prefs.endpoint = "tcp://127.0.0.1:5555"


def pump(addon, until, timeout: float = HANG_S) -> float:
    """Call the tick like the timer would until ``until()``; returns the last interval it asked for.

    ``timeout`` guards a hang (see tests/waits.py): the pump returns as soon as ``until()`` holds."""
    deadline = time.monotonic() + timeout
    interval = addon.tick.tick()
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
        interval = addon.tick.tick()
    return interval
