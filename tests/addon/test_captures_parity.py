"""Parity: every test capture read by the backend and by the add-on gives the same cameras.

Backend path: ``captures.load_capture`` from the repository, as the reconstruct job calls it. Add-on path: the
add-on as its zip is staged (``nerfart_blender.core.captures.read_capture`` over the bundled copy of
``captures/``), then the Blender camera settings it would create (``blender_cameras``) read back through
Blender's own projection formula (``intrinsics_from_blender``). The issue behind it: the add-on had readers of
its own that put fangzhou's principal point half a pixel off, preferred transforms.json where the backend
read COLMAP, and accepted other image files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import capture_fixtures as fx
import numpy as np
import pytest

import captures

DATA = Path("/work/shared/data")


def _with_deleted_frames(root: Path) -> Path:
    fx.colmap(root, n=6)
    for name in ("000001.png", "000004.png"):
        (root / "images" / name).unlink()
    return root


def _idr_beside_colmap(root: Path) -> Path:
    fx.colmap(root, n=5)
    return fx.idr(root, n=5, write_images=False)  # same K as the COLMAP model: COLMAP's pixel centres


def _mattes_by_index(root: Path) -> Path:
    fx.colmap(root, n=5, names=lambda i: f"img_{i:04d}.png")
    fx.mattes_by_index(root, 5, 20, 14)
    return root


def _both_colmap_and_transforms(root: Path) -> Path:
    fx.colmap(root, n=4)
    return fx.nerfstudio(root, n=4)


SYNTHETIC: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "nerfstudio": (fx.nerfstudio, None),
    "nerf_synthetic": (fx.nerf_synthetic, None),
    "colmap_text": (fx.colmap, None),
    "colmap_binary": (lambda r: fx.colmap(r, binary=True), None),
    "colmap_deleted_frames": (_with_deleted_frames, None),
    "colmap_and_transforms": (_both_colmap_and_transforms, None),
    "colmap_and_transforms_forced": (_both_colmap_and_transforms, "transforms_json"),
    "idr_beside_colmap": (_idr_beside_colmap, "idr"),
    "idr_alone": (fx.idr, None),
    "llff": (fx.llff, None),
    "mattes_by_index": (_mattes_by_index, None),
}
REAL = {"fangzhou_nature": None, "fangzhou_nature-idr": "idr", "fangzhou_nature-llff": "llff",
        "lego_half_res": None}


@pytest.fixture(scope="module")
def addon_captures(staged_addon: Path) -> ModuleType:
    return importlib.import_module("nerfart_blender.core.captures")


@pytest.fixture(scope="module")
def addon_intrinsics(staged_addon: Path) -> ModuleType:
    return importlib.import_module("nerfart_blender.core.intrinsics")


def _assert_same_cameras(path: Path, fmt: str | None, addon_captures: ModuleType, addon_intrinsics: ModuleType
                         ) -> None:
    backend = captures.load_capture(path, format=fmt)
    addon = addon_captures.read_capture(path, fmt)
    assert (addon.format, addon.root, addon.path) == (backend.source_format, backend.root.resolve(), backend.source)
    assert addon.warnings == backend.warnings and addon.notes == backend.notes
    cams = backend.cameras
    assert [c.name for c in addon.cameras] == cams.names
    assert [c.image for c in addon.cameras] == backend.image_paths
    settings, _ = addon_captures.blender_cameras(addon)
    for i, (cam, bc) in enumerate(zip(addon.cameras, settings, strict=True)):
        np.testing.assert_array_equal(cam.c2w, cams.c2w[i])
        np.testing.assert_array_equal(cam.c2w_blender @ captures.OPENGL_TO_OPENCV, cams.c2w[i])
        k = cam.intrinsics
        assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height) == (cams.fx[i], cams.fy[i], cams.cx[i], cams.cy[i],
                                                               cams.width[i], cams.height[i])
        assert cam.distortion == tuple(cams.distortion[i])
        # What the Blender camera projects (Blender's own formula): the backend's K.
        shown = addon_intrinsics.intrinsics_from_blender(bc)
        np.testing.assert_allclose([shown.fx, shown.fy, shown.cx, shown.cy], [cams.fx[i], cams.fy[i], cams.cx[i],
                                                                             cams.cy[i]], rtol=1e-9, atol=1e-9)
        assert (shown.width, shown.height) == (cams.width[i], cams.height[i])


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_capture_parity(name: str, tmp_path: Path, addon_captures, addon_intrinsics) -> None:
    build, fmt = SYNTHETIC[name]
    _assert_same_cameras(build(tmp_path / name), fmt, addon_captures, addon_intrinsics)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_capture_parity(name: str, addon_captures, addon_intrinsics) -> None:
    folder = DATA / name.split("-")[0]
    if not folder.is_dir():
        pytest.skip(f"test capture {folder} is not available")
    _assert_same_cameras(folder, REAL[name], addon_captures, addon_intrinsics)


def test_the_former_disagreements_are_gone(tmp_path: Path, addon_captures) -> None:
    """Each thing the add-on's own readers did differently, now read the backend's way through the add-on."""
    both = _both_colmap_and_transforms(tmp_path / "both")
    assert addon_captures.read_capture(both).format == "colmap"  # was transforms.json first
    idr = _idr_beside_colmap(tmp_path / "idr")
    cx = addon_captures.read_capture(idr, "idr").cameras[0].intrinsics.cx
    assert cx == pytest.approx(fx.COLMAP_INTRINSICS[2], abs=1e-9)  # was +0.5
    alone = fx.idr(tmp_path / "alone")
    cx = addon_captures.read_capture(alone).cameras[0].intrinsics.cx
    assert cx == pytest.approx(fx.COLMAP_INTRINSICS[2] + 0.5, abs=1e-9)  # IDR's own convention without COLMAP
    # Image files: what the backend decodes, any letter case (was .png .jpg .jpeg .exr, case-sensitive).
    llff = fx.llff(tmp_path / "llff")
    (llff / "images" / "003.png").rename(llff / "images" / "003.PNG")
    assert len(addon_captures.read_capture(llff).cameras) == 4
    fx.write_png(llff / "images" / "004.exr", 24, 16)  # not an image the readers list: no fifth view
    assert len(addon_captures.read_capture(llff).cameras) == 4
