"""The built zip installs and enables in the running Blender, with Blender's own installer.

Builds the Linux zip with the real pyzmq wheels (from the ``.whl/`` cache, or PyPI), then, in a fresh process
of this Python with ``BLENDER_USER_RESOURCES`` pointing at a temporary folder (never a real user profile),
installs it with ``bpy.ops.extensions.package_install_files`` and enables it (``zip_install_probe.py``). The
test environment's pyzmq is hidden from that process, so ``zmq`` must come from the wheel Blender installed
from the zip. Runs under every add-on lane (Blender 4.2 LTS / Python 3.11 and 5.2 LTS / Python 3.13).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import requires_bpy

import build_addon as ba

PROBE = Path(__file__).with_name("zip_install_probe.py")
PYTHON = "{}.{}".format(*sys.version_info[:2])


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory, repo_root) -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("installs the linux-x64 zip")
    try:
        (out,) = ba.build(("linux-x64",), output_dir=tmp_path_factory.mktemp("dist"), cache=repo_root / ".whl")
    except ba.BuildError as exc:
        if "pip download failed" in str(exc):
            pytest.skip(f"the pyzmq wheels are not cached in .whl/ and PyPI cannot be reached: {exc}")
        raise
    return out


def install_in_fresh_blender(zip_path: Path, user_dir: Path) -> dict:
    """Run the probe in a new process of this Python; returns its JSON report."""
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user_dir), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, str(PROBE), str(zip_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@requires_bpy
def test_zip_installs_enables_and_uses_its_own_pyzmq(linux_zip, tmp_path):
    report = install_in_fresh_blender(linux_zip, tmp_path / "profile")
    assert report["python"] == PYTHON
    assert report["install_result"] == ["FINISHED"], report["log"]
    assert report["enabled"], report["log"]
    # Blender installed exactly the zip's pyzmq, for this Python, into the throw-away profile.
    assert report["installed_wheels"] == [f"pyzmq-{ba.PYZMQ_VERSION}.dist-info"]
    wheel_dir = Path(report["wheel_dir"])
    assert wheel_dir.is_relative_to(tmp_path)
    assert report["zmq_from_extension"], report.get("zmq_file") or report.get("zmq_error")
    assert Path(report["zmq_file"]).is_relative_to(wheel_dir / "lib" / f"python{PYTHON}" / "site-packages")
    assert report["zmq_version"] == ba.PYZMQ_VERSION
    # The add-on registered: its operators and its sidebar panel exist.
    for op in ("connect", "import_capture", "stylize", "render", "extract_mesh", "start_local_backend"):
        assert op in report["operators"]
    assert report["has_panel"]


@requires_bpy
def test_probe_hides_the_test_environments_pyzmq(tmp_path):
    """The probe's guard is real: with the zip's wheels absent, ``import zmq`` fails even though this test
    environment has pyzmq installed."""
    env_site = Path(sysconfig.get_paths()["purelib"])
    if not (env_site / "zmq").is_dir():
        pytest.skip("this environment has no pyzmq to hide")
    code = ("import runpy, sys, sysconfig, os; "
            f"probe = runpy.run_path({str(PROBE)!r}); "
            "site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ('purelib', 'platlib')}; "
            "sys.meta_path.insert(0, probe['_HideEnvironmentZmq'](site)); "
            "import zmq")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "outside the test environment" in res.stderr
