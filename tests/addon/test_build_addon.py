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


@needs_tool
def test_cached_wheels_split_platforms(tmp_path, repo_root):
    cache = repo_root / ".whl"
    if not any(cache.glob("pyzmq-*universal2.whl")) or not any(cache.glob("pyzmq-*win_amd64.whl")):
        pytest.skip("run build_addon.py once with network access to fill the wheel cache")
    outs = ba.build(("windows-x64", "macos-arm64"), split=True, output_dir=tmp_path, cache=cache, offline=True)
    by_name = {p.name: p for p in outs}
    assert set(by_name) == {"nerfart_blender-0.1.0-windows_x64.zip", "nerfart_blender-0.1.0-macos_arm64.zip"}
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-windows_x64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-27.3.0-cp311-cp311-win_amd64.whl"]
        assert m["blender_version_min"] == "4.2.0"
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-macos_arm64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl"]
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
