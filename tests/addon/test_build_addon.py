"""build_addon.py: staging, manifest filling, Blender's own validation, and the zip's contents."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

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


# The wheels of the issue-19 zip (pyzmq 27.3.0): Blender on Python 3.13 refused it although it had a wheel there.
CP311_PLUS_ABI3 = ["./wheels/pyzmq-27.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                   "./wheels/pyzmq-27.3.0-cp312-abi3-manylinux_2_28_x86_64.whl"]
# Wheel lists exercising each branch of Blender's rule: abi3 alone, exact versions, py3, py2.py3, abi3 + exact.
WHEEL_LISTS = [
    CP311_PLUS_ABI3,
    ["x-1-cp312-abi3-win_amd64.whl"],
    ["x-1-cp311-cp311-win_amd64.whl", "x-1-cp313-cp313-win_amd64.whl"],
    ["x-1-py3-none-any.whl"],
    ["x-1-py2.py3-none-any.whl", "y-2-cp313-cp313-win_amd64.whl"],
    ["x-1-cp312-abi3-win_amd64.whl", "y-2-cp313-cp313-win_amd64.whl"],
]


def test_blender_refuses_cp311_plus_abi3_on_python_313():
    """Blender reads cp312-abi3 as "3" and drops it next to cp311's "3.11": the extension is refused on 3.13
    although its wheel filter would install the abi3 wheel there. The build must see that."""
    assert ba.blender_python_versions(CP311_PLUS_ABI3) == {"3.11"}
    assert not ba.blender_accepts_python(CP311_PLUS_ABI3, "3.13")
    assert ba.blender_accepts_python(CP311_PLUS_ABI3, "3.11")
    manifest = {"platforms": ["linux-x64"], "wheels": CP311_PLUS_ABI3}
    assert ba.refused_pythons(manifest) == ["3.13"]
    fixed = {"platforms": ["linux-x64"], "wheels": ["./wheels/pyzmq-26.4.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                                                     "./wheels/pyzmq-26.4.0-cp313-cp313-manylinux_2_28_x86_64.whl"]}
    assert ba.refused_pythons(fixed) == [] and ba.missing_wheels(fixed) == []
    assert ba.blender_python_versions(["x-1-cp312-abi3-win_amd64.whl"]) == {"3"}  # abi3 alone: any 3.x


def test_check_zip_rejects_a_zip_blender_313_refuses(tmp_path):
    """check_zip (run on every build) fails on the issue-19 wheel set, with the versions Blender read."""
    wheels = []
    for entry in CP311_PLUS_ABI3:  # stand-in files: check_zip compares them to the "downloaded" ones by hash
        path = tmp_path / entry.rsplit("/", 1)[1]
        path.write_bytes(entry.encode())
        wheels.append(ba.Wheel(path, ("linux-x64",), ()))
    manifest = (ba.ADDON_DIR / ba.MANIFEST).read_text()
    manifest = ba.set_manifest_value(manifest, "platforms", '["linux-x64"]')
    manifest = ba.set_manifest_value(manifest, "wheels", ba.toml_list(CP311_PLUS_ABI3))
    out = tmp_path / "x.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(ba.MANIFEST, manifest)
        zf.writestr("__init__.py", "")
        for package in ba.SHARED_PACKAGES:
            zf.writestr(f"{package.name}/__init__.py", "")
        for w in wheels:
            zf.write(w.path, f"wheels/{w.path.name}")
    with pytest.raises(ba.BuildError, match=r"CPython 3\.13 would refuse .* Python 3\.11"):
        ba.check_zip(out, wheels)


def _blenders_extension_cli():
    """Blender's own ``blender_ext.py`` from the installed bpy module, imported as a module."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the bpy module is not installed")
    hits = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    assert hits, "bpy has no bl_pkg/cli/blender_ext.py"
    mod_spec = importlib.util.spec_from_file_location("_blender_ext_under_test", hits[-1])
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("wheels", WHEEL_LISTS)
def test_python_rule_matches_the_running_blenders_own_code(wheels):
    """Our copy of the rule agrees with the installed Blender's python_versions_from_wheels and its install-time
    check (repository_filter_skip) on Python 3.11, 3.12 and 3.13."""
    ext = _blenders_extension_cli()
    theirs = {".".join(str(i) for i in v) for v in ext.python_versions_from_wheels(wheels)}
    assert ba.blender_python_versions(wheels) == theirs
    for python in ("3.11", "3.12", "3.13"):
        skipped = ext.repository_filter_skip(
            {"python_versions": sorted(theirs)}, filter_blender_version=(0, 0, 0), filter_platform="linux-x64",
            filter_python_version=(*map(int, python.split(".")), 0), skip_message_fn=lambda _m: None,
            error_fn=lambda ex: pytest.fail(str(ex)))
        assert ba.blender_accepts_python(wheels, python) == (not skipped), (wheels, python)


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
    # Blender derives "3.11, 3.13" from the wheels, so it accepts the extension on both.
    assert ba.blender_python_versions(m["wheels"]) == {"3.11", "3.13"} and ba.refused_pythons(m) == []
    wheels = [w.rsplit("/", 1)[1] for w in m["wheels"]]
    assert all(f"wheels/{w}" in names for w in wheels)
    for platform in ba.ALL_PLATFORMS:
        mine = [w for w in wheels if platform in ba.blender_platforms_of_wheel(w)]
        assert any("-cp311-cp311-" in w for w in mine), platform
        assert any("-cp313-cp313-" in w for w in mine), platform
    assert m["blender_version_min"] == ba.MACOS_MIN_BLENDER  # the macOS wheels are universal2


@needs_tool
def test_cached_wheels_split_platforms(tmp_path, wheel_cache):
    outs = ba.build(("windows-x64", "macos-arm64"), split=True, output_dir=tmp_path, cache=wheel_cache,
                    offline=True)
    by_name = {p.name: p for p in outs}
    assert set(by_name) == {"nerfart_blender-0.1.0-windows_x64.zip", "nerfart_blender-0.1.0-macos_arm64.zip"}
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-windows_x64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-26.4.0-cp311-cp311-win_amd64.whl",
                               "./wheels/pyzmq-26.4.0-cp313-cp313-win_amd64.whl"]
        assert m["blender_version_min"] == "4.2.0"
    with zipfile.ZipFile(by_name["nerfart_blender-0.1.0-macos_arm64.zip"]) as zf:
        m = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert m["wheels"] == ["./wheels/pyzmq-26.4.0-cp311-cp311-macosx_10_15_universal2.whl",
                               "./wheels/pyzmq-26.4.0-cp313-cp313-macosx_10_15_universal2.whl"]
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
