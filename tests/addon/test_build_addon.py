"""build_addon.py: staging, manifest filling, Blender's own validation, and the zip's contents."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile

import pytest

import build_addon as ba

needs_tool = pytest.mark.skipif(importlib.util.find_spec("bpy") is None and not __import__("shutil").which("blender"),
                                reason="Blender's extension tool comes with the bpy module or a blender binary")


def test_wheel_platform_tags():
    assert ba.blender_platforms_of_wheel("pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl") == \
        ("macos-arm64", "macos-x64")
    assert ba.blender_platforms_of_wheel(
        "pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl") == ("linux-x64",)
    assert ba.blender_platforms_of_wheel("pyzmq-27.3.0-cp311-cp311-win_amd64.whl") == ("windows-x64",)
    assert ba.blender_platforms_of_wheel("x-1-cp311-cp311-macosx_11_0_arm64.whl") == ("macos-arm64",)


def test_manifest_value_replacement():
    text = 'id = "x"\nwheels = []\nplatforms = ["a"]\n'
    out = ba.set_manifest_value(text, "wheels", ba.toml_list(["./wheels/a.whl"]))
    assert tomllib.loads(out)["wheels"] == ["./wheels/a.whl"]
    with pytest.raises(ba.BuildError, match="no one-line"):
        ba.set_manifest_value(text, "missing", "1")


def test_repository_manifest_rules():
    m = tomllib.loads((ba.ADDON_DIR / ba.MANIFEST).read_text())
    assert m["schema_version"] == "1.0.0" and m["id"] == "nerfart_blender" and m["type"] == "add-on"
    assert m["blender_version_min"] == "4.2.0" and m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(m["permissions"]) == {"network", "files"}
    assert all(len(v) <= 64 and v[-1].isalnum() for v in m["permissions"].values())
    assert len(m["tagline"]) <= 64 and m["tagline"][-1].isalnum()
    assert set(m["platforms"]) == set(ba.ALL_PLATFORMS)


@needs_tool
def test_no_wheels_build_validates(tmp_path):
    (out,) = ba.build(("linux-x64", "windows-x64"), with_wheels=False, output_dir=tmp_path)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert out.name == "nerfart_blender-0.1.0.zip"
    assert {"__init__.py", "core/intrinsics.py", "protocol/__init__.py", "captures/__init__.py", "captures/capture.py",
            "blender_manifest.toml"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/") for n in names)
    assert manifest["wheels"] == [] and manifest["platforms"] == ["linux-x64", "windows-x64"]
    assert manifest["blender_version_min"] == "4.2.0"


@pytest.fixture(scope="module")
def wheel_cache(repo_root):
    """The build's wheel cache holding every platform's wheels for every Python (filled from PyPI if needed)."""
    cache = repo_root / ".whl"
    try:
        ba.fetch_wheels(ba.ALL_PLATFORMS, cache, offline=False)
    except ba.BuildError as exc:
        pytest.skip(f"the pyzmq wheels are not cached in {cache} and PyPI cannot be reached: {exc}")
    return cache


def test_wheel_python_rule():
    """Blender's wheel filter: cpXY-cpXY serves X.Y only; cpXY-abi3 serves X.Y and later; py3 serves any 3.x."""
    assert ba.wheel_serves_python("pyzmq-27.3.0-cp311-cp311-win_amd64.whl", "3.11")
    assert not ba.wheel_serves_python("pyzmq-27.3.0-cp311-cp311-win_amd64.whl", "3.13")
    assert ba.wheel_serves_python("pyzmq-27.3.0-cp312-abi3-win_amd64.whl", "3.13")
    assert not ba.wheel_serves_python("pyzmq-27.3.0-cp312-abi3-win_amd64.whl", "3.11")
    assert ba.wheel_serves_python("x-1-cp313-cp313-manylinux_2_28_x86_64.whl", "3.13")
    assert ba.wheel_serves_python("x-1-py3-none-any.whl", "3.13")
    manifest = {"platforms": ["linux-x64", "windows-x64"],
                "wheels": ["./wheels/pyzmq-27.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                           "./wheels/pyzmq-27.3.0-cp312-abi3-manylinux_2_28_x86_64.whl",
                           "./wheels/pyzmq-27.3.0-cp311-cp311-win_amd64.whl"]}
    assert ba.missing_wheels(manifest) == ["windows-x64 CPython 3.13"]


@needs_tool
def test_every_platform_gets_a_wheel_for_every_blender_python(tmp_path, wheel_cache):
    """Blender 4.2-5.0 embed CPython 3.11, Blender 5.1 3.13: the zip lists a pyzmq wheel for each, per platform,
    and passes Blender's own validator (build() runs it)."""
    assert ba.PYTHON_VERSIONS == ("3.11", "3.13")
    (out,) = ba.build(ba.ALL_PLATFORMS, output_dir=tmp_path, cache=wheel_cache, offline=True)
    with zipfile.ZipFile(out) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        names = set(zf.namelist())
    assert m["platforms"] == list(ba.ALL_PLATFORMS) and ba.missing_wheels(m) == []
    wheels = [w.rsplit("/", 1)[1] for w in m["wheels"]]
    assert all(f"wheels/{w}" in names for w in wheels)
    for platform in ba.ALL_PLATFORMS:
        mine = [w for w in wheels if platform in ba.blender_platforms_of_wheel(w)]
        assert any("-cp311-cp311-" in w for w in mine), platform
        # pyzmq builds its wheels for 3.12+ with the stable ABI; Blender installs them on 3.13.
        assert any(ba.wheel_serves_python(w, "3.13") and not ba.wheel_serves_python(w, "3.11") for w in mine), \
            platform
    assert m["blender_version_min"] == ba.MACOS_MIN_BLENDER  # the macOS wheels are universal2


@needs_tool
def test_cached_wheels_split_platforms(tmp_path, wheel_cache):
    outs = ba.build(("windows-x64", "macos-arm64"), split=True, output_dir=tmp_path, cache=wheel_cache,
                    offline=True)
    by_name = {p.name: p for p in outs}
    assert set(by_name) == {"nerfart_blender-0.1.0-windows_x64.zip", "nerfart_blender-0.1.0-macos_arm64.zip"}
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-windows_x64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-27.3.0-cp311-cp311-win_amd64.whl",
                               "./wheels/pyzmq-27.3.0-cp312-abi3-win_amd64.whl"]
        assert m["blender_version_min"] == "4.2.0"
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-macos_arm64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl",
                               "./wheels/pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl"]
        assert m["blender_version_min"] == ba.MACOS_MIN_BLENDER  # universal2 needs a fixed 4.2.x


@needs_tool
def test_validation_failure_is_reported(tmp_path, monkeypatch):
    bad_dir = tmp_path / "addon"
    bad_dir.mkdir()
    (bad_dir / "__init__.py").write_text("def register(): pass\ndef unregister(): pass\n")
    text = (ba.ADDON_DIR / ba.MANIFEST).read_text().replace('tagline = "Text-driven', 'tagline = "Ends badly.')
    text = text.replace("with a NeRF backend\"", "with a NeRF backend.\"")
    (bad_dir / ba.MANIFEST).write_text(text)
    monkeypatch.setattr(ba, "ADDON_DIR", bad_dir)
    with pytest.raises(ba.BuildError, match="punctuation"):
        ba.build(("linux-x64",), with_wheels=False, output_dir=tmp_path / "out")


def test_command_line_offline_without_cache_fails_readably(tmp_path, repo_root):
    res = subprocess.run([sys.executable, str(repo_root / "build_addon.py"), "--platform", "linux-x64",
                          "--offline", "--wheel-cache", str(tmp_path / "empty"), "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--offline" in res.stderr
