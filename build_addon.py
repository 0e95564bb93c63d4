#!/usr/bin/env python3
"""Build the installable Blender extension zip of NeRF-Art for Blender, in one command.

    .venv/bin/python build_addon.py                      # dist/nerfart_blender-<version>.zip, all platforms
    .venv/bin/python build_addon.py --split-platforms    # one zip per platform (smaller downloads)
    .venv/bin/python build_addon.py --platform linux-x64 # one platform only
    .venv/bin/python build_addon.py --no-wheels          # no pyzmq wheels (fast, for tests)

Steps:

1. Stage ``blender_addon/`` and the repository's shared packages ``protocol/`` (the wire format) and
   ``captures/`` (the capture readers the backend uses too), copied in as ``<zip>/protocol/`` and
   ``<zip>/captures/`` (the add-on imports them relatively), without ``__pycache__``.
2. Fetch the pinned pyzmq wheels for every CPython the supported Blender versions embed (:data:`PYTHON_VERSIONS`:
   3.11 for Blender 4.2 to 5.0, 3.13 for Blender 5.1 to 5.2 LTS and distribution builds) and every platform,
   with ``pip download --only-binary=:all: --no-deps --platform ... --python-version ...`` into a cache
   (``.whl/`` by default; later builds work offline), and list them in the staged manifest's ``wheels``.
   Blender decides whether an extension fits its Python from the wheel filenames alone, with a rule of its own
   (:func:`blender_python_versions`): a ``cpXY-cpXY`` wheel counts as "X.Y", a stable-ABI ``cpXY-abi3`` wheel
   only as "X", and "X" is dropped as soon as any wheel names an "X.Y". So ``cp311`` + ``cp312-abi3`` reads as
   "3.11 only" and Blender on CPython 3.13 refuses the whole extension, although its wheel filter would install
   the abi3 wheel there. pyzmq 27 ships only ``cp312-abi3`` wheels for 3.12+, hence the pin to 26.4.0, the
   newest pyzmq with ``cp313-cp313`` wheels: the zip then reads as "3.11, 3.13". The build checks, with
   Blender's rules, that the extension is accepted on every Python and that each platform gets a wheel there.
3. Build the zip with Blender's own extension builder and check it with Blender's own validator
   (``blender_ext.py build`` / ``validate`` from ``addons_core/bl_pkg/cli``, the code behind
   ``blender --command extension build|validate``), found in the installed ``bpy`` module or a ``blender``
   binary; then check that every listed wheel is in the zip, unmodified, and that each platform has one per Python.

macOS: pyzmq publishes only ``universal2`` wheels for macOS. Blender 4.2.0 skipped universal2 wheels when
installing (fixed in later 4.2 releases; 4.2.23 is known good), so any zip that carries the macOS wheel gets
``blender_version_min`` raised to :data:`MACOS_MIN_BLENDER`. ``--split-platforms`` keeps 4.2.0 for the
Linux and Windows zips. Wheels are bundled exactly as downloaded from PyPI (extensions must not modify them).

The add-on never installs anything at run time: everything it needs is in the zip.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "blender_addon"
PROTOCOL_DIR = ROOT / "protocol"
CAPTURES_DIR = ROOT / "captures"
# Repository packages the add-on imports relatively from inside its zip (stdlib, numpy and pyzmq only).
SHARED_PACKAGES = (PROTOCOL_DIR, CAPTURES_DIR)
MANIFEST = "blender_manifest.toml"

# The pyzmq bundled in the zip (the backend and test venvs may run a newer one: the ZeroMQ wire protocol and
# the bundled libzmq 4.3.5 are the same). 26.4.0 is the newest release with per-version cp313-cp313 wheels;
# 27.x publishes only cp312-abi3 for 3.12+, which Blender's compatibility check reads as "3" and then drops next
# to the cp311 wheel's "3.11" (see blender_python_versions), refusing the extension on Python 3.13.
PYZMQ_VERSION = "26.4.0"
# The CPython versions the supported Blender releases embed: 4.2 LTS to 5.0 ship 3.11, 5.1 to 5.2 LTS 3.13 (and
# Linux distributions build Blender against their system Python, 3.13 in current ones).
PYTHON_VERSIONS = ("3.11", "3.13")
# Blender platform -> the pip ``--platform`` tag to ask for (pip also accepts compatible older tags and, for
# macOS, universal2 wheels).
PIP_PLATFORMS = {
    "linux-x64": "manylinux_2_28_x86_64",
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_10_15_x86_64",
}
ALL_PLATFORMS = tuple(PIP_PLATFORMS)
MACOS_MIN_BLENDER = "4.2.23"
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".zip", ".blend1"}


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    platforms: tuple[str, ...]  # Blender platforms this wheel serves
    pythons: tuple[str, ...]  # the PYTHON_VERSIONS it serves

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Wheels
# ---------------------------------------------------------------------------------------------------------


def blender_platforms_of_wheel(filename: str) -> tuple[str, ...]:
    """Blender platforms a wheel file serves, from its platform tag (``universal2`` serves both Macs)."""
    tags = filename[:-4].split("-")[-1].split(".")
    out: set[str] = set()
    for tag in tags:
        if tag.startswith("manylinux") and tag.endswith("x86_64"):
            out.add("linux-x64")
        elif tag == "win_amd64":
            out.add("windows-x64")
        elif tag.startswith("macosx_") and tag.endswith("universal2"):
            out.update(("macos-arm64", "macos-x64"))
        elif tag.startswith("macosx_") and tag.endswith("arm64"):
            out.add("macos-arm64")
        elif tag.startswith("macosx_") and tag.endswith("x86_64"):
            out.add("macos-x64")
    return tuple(sorted(out))


def wheel_serves_python(filename: str, python: str) -> bool:
    """Whether Blender installs the wheel ``filename`` on CPython ``python`` ("3.13").

    The rule of Blender's own wheel filter (``bl_pkg``): a ``cpXY-cpXY`` wheel serves exactly X.Y; a stable-ABI
    ``cpXY-abi3`` wheel serves X.Y and every later 3.x; ``py3-none`` serves any 3.x.
    """
    python_tag, abi_tag = filename[:-4].split("-")[-3:-1]
    major, minor = (int(x) for x in python.split("."))
    for tag in python_tag.split("."):
        digits = tag[2:]
        if not tag.startswith(("cp", "py")) or not digits.isdigit():
            continue
        if len(digits) == 1:
            if int(digits) == major:
                return True
            continue
        wheel_version = (int(digits[0]), int(digits[1:]))
        if wheel_version == (major, minor):
            return True
        if abi_tag == f"abi{major}" and wheel_version[0] == major and wheel_version <= (major, minor):
            return True
    return False


def blender_python_versions(wheel_filenames: list[str]) -> set[str]:
    """The Python versions Blender believes an extension supports, from its wheel filenames: ``{"3.11", "3.13"}``.

    Blender's own rule (``python_versions_from_wheels`` in ``bl_pkg/cli/blender_ext.py``, the same in 4.2 LTS to
    5.2 LTS): a wheel with a stable-ABI tag (``abi3``) gives only the major version "3"; any other wheel gives
    the versions of its python tag ("cp311" -> "3.11", "py3" -> "3"); Python 2 is ignored; the union is taken
    and a major version "3" is dropped when any "3.x" is present. An empty set means "any Python".
    """
    major_only: set[tuple[int, ...]] = set()
    major_minor: set[tuple[int, ...]] = set()
    for filename in wheel_filenames:
        python_tag, abi_tag = filename.rsplit("/", 1)[-1][:-4].split("-")[-3:-1]
        versions = {(int(t[3:]),) for t in abi_tag.split(".") if t.startswith("abi") and t[3:].isdigit()}
        if not versions:
            for tag in python_tag.split("."):
                m = re.match(r"([a-zA-Z]+)([0-9]+)", tag)
                if m is None or m.group(1).lower() not in {"py", "cp"}:
                    raise BuildError(f"Blender cannot read the Python version of wheel {filename}")
                digits = m.group(2)
                versions.add((int(digits[:1]), int(digits[1:])) if len(digits) > 1 else (int(digits),))
        for v in versions:
            if v[0] > 2:
                (major_only if len(v) == 1 else major_minor).add(v)
    for v in major_minor:
        major_only.discard((v[0],))
    return {".".join(str(i) for i in v) for v in major_only | major_minor}


def blender_accepts_python(wheel_filenames: list[str], python: str) -> bool:
    """Whether Blender on CPython ``python`` ("3.13") accepts an extension bundling these wheels at all, rather
    than refusing it with "This Python version (3.13) isn't compatible with (3.11)" (Blender's
    ``repository_filter_skip``: "X.Y" or "X" must be among :func:`blender_python_versions`)."""
    versions = blender_python_versions(wheel_filenames)
    return not versions or python in versions or python.split(".")[0] in versions


def cached_wheel(cache: Path, platform: str, python: str) -> Path | None:
    """A pyzmq wheel already in the cache for ``platform`` and CPython ``python``: one built for exactly that
    Python before a stable-ABI one, architecture-specific before universal2."""
    found = sorted(cache.glob(f"pyzmq-{PYZMQ_VERSION}-*.whl"))
    matches = [p for p in found if platform in blender_platforms_of_wheel(p.name) and wheel_serves_python(p.name, python)]
    matches.sort(key=lambda p: ("abi3" in p.name, "universal2" in p.name))
    return matches[0] if matches else None


def _download_wheel(cache: Path, platform: str, python: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", f"pyzmq=={PYZMQ_VERSION}", "--only-binary=:all:",
           "--no-deps", "--platform", PIP_PLATFORMS[platform], "--python-version", python, "--implementation",
           "cp", "--dest", str(cache), "--quiet", "--disable-pip-version-check"]
    print(f"downloading pyzmq {PYZMQ_VERSION} for {platform} ({PIP_PLATFORMS[platform]}), CPython {python}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"pip download failed for {platform}, CPython {python}:\n{result.stderr.strip()}")


def fetch_wheels(platforms: tuple[str, ...], cache: Path, offline: bool,
                 pythons: tuple[str, ...] = PYTHON_VERSIONS) -> list[Wheel]:
    """The pyzmq wheels serving every one of ``platforms`` on every one of ``pythons``, downloaded into
    ``cache`` when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    chosen: set[Path] = set()
    for platform in platforms:
        for python in pythons:
            wheel = cached_wheel(cache, platform, python)
            if wheel is None:
                if offline:
                    raise BuildError(f"no cached pyzmq {PYZMQ_VERSION} wheel for {platform}, CPython {python} in "
                                     f"{cache} and --offline was given; run once with network access")
                _download_wheel(cache, platform, python)
                wheel = cached_wheel(cache, platform, python)
                if wheel is None:
                    raise BuildError(f"pip download gave no pyzmq wheel usable on {platform} with CPython {python} "
                                     f"in {cache}")
            chosen.add(wheel)
    names = [p.name for p in chosen]
    refused = [python for python in pythons if not blender_accepts_python(names, python)]
    if refused:
        raise BuildError(f"Blender reads the wheels {sorted(names)} as Python "
                         f"{', '.join(sorted(blender_python_versions(names)))} and would refuse the extension on "
                         f"CPython {', '.join(refused)}; PYZMQ_VERSION needs per-version wheels for every Python")
    return [Wheel(p, blender_platforms_of_wheel(p.name), tuple(v for v in pythons if wheel_serves_python(p.name, v)))
            for p in sorted(chosen)]


# ---------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in EXCLUDE_DIRS or Path(n).suffix in EXCLUDE_SUFFIXES
            or (n == "wheels" and Path(directory).resolve() == ADDON_DIR)}


def set_manifest_value(text: str, key: str, value: str) -> str:
    """Replace the single-line top-level ``key = ...`` of a manifest (the key must be present)."""
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
    if not pattern.search(text):
        raise BuildError(f"{MANIFEST} has no one-line '{key} = ...' entry to fill in")
    return pattern.sub(lambda _m: f"{key} = {value}", text, count=1)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def stage(dest: Path, platforms: tuple[str, ...], wheels: list[Wheel]) -> dict:
    """Copy the add-on, the shared packages and the wheels into ``dest``; write its manifest. Returns it."""
    if not (ADDON_DIR / "__init__.py").is_file():
        raise BuildError(f"{ADDON_DIR} has no __init__.py")
    shutil.copytree(ADDON_DIR, dest, ignore=_ignore)
    for package in SHARED_PACKAGES:
        if (dest / package.name).exists():
            raise BuildError(f"blender_addon/ must not contain its own {package.name}/ (it is copied from the "
                             "repository)")
        if not (package / "__init__.py").is_file():
            raise BuildError(f"{package} is missing; the add-on imports it from its zip")
        shutil.copytree(package, dest / package.name, ignore=_ignore)
    if wheels:
        (dest / "wheels").mkdir()
        for w in wheels:
            shutil.copy2(w.path, dest / "wheels" / w.path.name)
    text = (ADDON_DIR / MANIFEST).read_text(encoding="utf-8")
    text = set_manifest_value(text, "platforms", toml_list(list(platforms)))
    text = set_manifest_value(text, "wheels", toml_list([f"./wheels/{w.path.name}" for w in wheels]))
    if any("universal2" in w.path.name for w in wheels):
        current = tomllib.loads(text)["blender_version_min"]
        if _version_tuple(current) < _version_tuple(MACOS_MIN_BLENDER):
            text = set_manifest_value(text, "blender_version_min", f'"{MACOS_MIN_BLENDER}"')
            print(f"note: the macOS pyzmq wheel is universal2, which Blender {current} does not install; "
                  f"blender_version_min raised to {MACOS_MIN_BLENDER} for this zip")
    (dest / MANIFEST).write_text(text, encoding="utf-8")
    return tomllib.loads(text)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


# ---------------------------------------------------------------------------------------------------------
# Blender's extension tool
# ---------------------------------------------------------------------------------------------------------


def find_extension_tool(blender: str | None) -> list[str]:
    """The command prefix that runs Blender's extension CLI (``build``/``validate`` sub-commands follow).

    Order: ``--blender`` (``blender --command extension``), then ``blender_ext.py`` inside the installed
    ``bpy`` module (run with this Python, which needs 3.11+ for tomllib), then ``blender`` on PATH.
    """
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    spec = importlib.util.find_spec("bpy")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            hits = sorted(Path(base).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
            if hits:
                return [sys.executable, str(hits[-1])]
    on_path = shutil.which("blender")
    if on_path:
        return [on_path, "--factory-startup", "--command", "extension"]
    raise BuildError("Blender's extension tool was not found: install the bpy module in this Python "
                     "(pip install bpy==5.0.1) or pass --blender /path/to/blender")


def run_tool(tool: list[str], *args: str) -> str:
    result = subprocess.run([*tool, *args], capture_output=True, text=True)
    out = (result.stdout + result.stderr).strip()
    failed = any(line.startswith(("FATAL_ERROR", "Error")) for line in out.splitlines())
    if result.returncode != 0 or failed:
        raise BuildError(f"Blender's extension {args[0]} failed:\n{out}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Checks on the result
# ---------------------------------------------------------------------------------------------------------


def check_zip(path: Path, wheels: list[Wheel]) -> dict:
    """Our own checks beyond Blender's validator; returns the zip's manifest."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        bad = zf.testzip()
        if bad is not None:
            raise BuildError(f"{path.name}: member {bad} is corrupt")
        manifest = tomllib.loads(zf.read(MANIFEST).decode("utf-8"))
        if "__init__.py" not in names:
            raise BuildError(f"{path.name} has no __init__.py at its root")
        for package in SHARED_PACKAGES:
            if f"{package.name}/__init__.py" not in names:
                raise BuildError(f"{path.name} has no {package.name}/__init__.py")
        junk = sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo")))
        if junk:
            raise BuildError(f"{path.name} contains build junk: {junk[:5]}")
        listed = manifest.get("wheels", [])
        for entry in listed:
            member = entry.removeprefix("./")
            if member not in names:
                raise BuildError(f"{path.name}: manifest lists {entry} but the zip does not contain it")
        in_zip = sorted(n for n in names if n.startswith("wheels/") and n.endswith(".whl"))
        if sorted(e.removeprefix("./") for e in listed) != in_zip:
            raise BuildError(f"{path.name}: wheels in the zip {in_zip} differ from the manifest's {listed}")
        digests = {w.path.name: w.sha256 for w in wheels}
        for member in in_zip:
            name = member.split("/", 1)[1]
            if hashlib.sha256(zf.read(member)).hexdigest() != digests.get(name):
                raise BuildError(f"{path.name}: {member} differs from the downloaded wheel")
    if wheels:
        refused = refused_pythons(manifest)
        if refused:
            raise BuildError(f"{path.name}: Blender on CPython {', '.join(refused)} would refuse this extension: "
                             f"it reads its wheels as Python {', '.join(sorted(blender_python_versions(listed)))}")
        missing = missing_wheels(manifest)
        if missing:
            raise BuildError(f"{path.name}: no pyzmq wheel listed for {', '.join(missing)}")
    return manifest


def refused_pythons(manifest: dict, pythons: tuple[str, ...] = PYTHON_VERSIONS) -> list[str]:
    """The Pythons of ``pythons`` on which Blender refuses to enable the extension of ``manifest`` at all
    (:func:`blender_accepts_python` on its listed wheels)."""
    wheels = manifest.get("wheels", [])
    return [python for python in pythons if not blender_accepts_python(wheels, python)]


def missing_wheels(manifest: dict, pythons: tuple[str, ...] = PYTHON_VERSIONS) -> list[str]:
    """``"<platform> CPython <version>"`` for every platform of ``manifest`` that has no listed wheel for a
    Python of ``pythons`` (Blender would install the extension there without pyzmq)."""
    names = [entry.rsplit("/", 1)[-1] for entry in manifest.get("wheels", [])]
    return [f"{platform} CPython {python}" for platform in manifest["platforms"] for python in pythons
            if not any(platform in blender_platforms_of_wheel(n) and wheel_serves_python(n, python) for n in names)]


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def build(platforms: tuple[str, ...], *, with_wheels: bool = True, split: bool = False,
          output_dir: Path = ROOT / "dist", cache: Path = ROOT / ".whl", offline: bool = False,
          blender: str | None = None) -> list[Path]:
    """Build and validate the zip(s); returns their paths."""
    for p in platforms:
        if p not in PIP_PLATFORMS:
            raise BuildError(f"unknown platform {p!r}; choose from {', '.join(ALL_PLATFORMS)}")
    tool = find_extension_tool(blender)
    wheels = fetch_wheels(platforms, cache, offline) if with_wheels else []
    version = tomllib.loads((ADDON_DIR / MANIFEST).read_text(encoding="utf-8"))["version"]
    ext_id = tomllib.loads((ADDON_DIR / MANIFEST).read_text(encoding="utf-8"))["id"]
    output_dir.mkdir(parents=True, exist_ok=True)
    groups = [(p,) for p in platforms] if split else [platforms]
    outputs = []
    for group in groups:
        group_wheels = [w for w in wheels if set(w.platforms) & set(group)]
        suffix = f"-{group[0].replace('-', '_')}" if split else ""
        out = output_dir / f"{ext_id}-{version}{suffix}.zip"
        with tempfile.TemporaryDirectory(prefix="nerfart_build_") as tmp:
            src = Path(tmp) / ext_id
            stage(src, group, group_wheels)
            run_tool(tool, "validate", str(src))
            if out.exists():
                out.unlink()
            run_tool(tool, "build", "--source-dir", str(src), "--output-filepath", str(out))
        run_tool(tool, "validate", str(out))
        manifest = check_zip(out, group_wheels)
        size = out.stat().st_size / 1e6
        print(f"built {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({size:.1f} MB): "
              f"platforms {', '.join(manifest['platforms'])}; Blender >= {manifest['blender_version_min']}; "
              f"wheels: {', '.join(w.path.name for w in group_wheels) or 'none'}; passed Blender's validation")
        outputs.append(out)
    return outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--platform", action="append", choices=ALL_PLATFORMS,
                    help="a platform to build for (repeatable; default: all four)")
    ap.add_argument("--split-platforms", action="store_true", help="write one zip per platform")
    ap.add_argument("--no-wheels", action="store_true", help="bundle no pyzmq wheels (for fast tests)")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "dist", help="where the zip goes (default dist/)")
    ap.add_argument("--wheel-cache", type=Path, default=ROOT / ".whl", help="wheel download cache (default .whl/)")
    ap.add_argument("--offline", action="store_true", help="use cached wheels only, never download")
    ap.add_argument("--blender", help="a Blender executable to validate with instead of the bpy module's tool")
    args = ap.parse_args(argv)
    platforms = tuple(dict.fromkeys(args.platform)) if args.platform else ALL_PLATFORMS
    try:
        build(platforms, with_wheels=not args.no_wheels, split=args.split_platforms, output_dir=args.output_dir,
              cache=args.wheel_cache, offline=args.offline, blender=args.blender)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
