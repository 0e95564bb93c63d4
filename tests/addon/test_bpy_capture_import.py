"""Import Capture in real Blender: pixel aspects (one per scene) and the backend's own cameras.

Blender has one pixel aspect per scene, so a capture whose views need different ones cannot be shown exactly:
it is refused before anything is created; views that share one are imported exactly, non-square pixels
included. What Blender projects (``Object.calc_matrix_camera``) is compared with the backend's reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import capture_fixtures as fx
import numpy as np
import pytest
from conftest import requires_bpy

import captures

pytestmark = requires_bpy

bpy = pytest.importorskip("bpy")


def _import(scene, folder: Path, show_photos: bool = False) -> list:
    scene.nerfart.capture.folder = str(folder)
    scene.nerfart.capture.show_photos = show_photos
    # The pixel aspect checks need the scene set to the capture (off by default: the artist's shot settings).
    scene.nerfart.capture.set_resolution = True
    assert bpy.ops.nerfart.import_capture() == {"FINISHED"}
    return sorted((o for o in scene.nerfart.capture.cameras.objects if o.type == "CAMERA"), key=lambda o: o.name)


def _assert_blender_projects_the_backend_cameras(scene, objects: list, folder: Path, fy_rtol: float = 1e-5) -> None:
    from nerfart_blender.cameras_bpy import matrix_to_numpy, projection_intrinsics
    from nerfart_blender.core.poses import capture_from_world

    backend = captures.load_capture(folder).cameras
    bpy.context.view_layer.update()
    placement = matrix_to_numpy(scene.nerfart.capture.placement.matrix_world)
    by_name = {name: i for i, name in enumerate(backend.names)}
    for obj in objects:
        i = by_name[obj.name]
        scene.render.resolution_x, scene.render.resolution_y = int(backend.width[i]), int(backend.height[i])
        k = projection_intrinsics(obj, scene)
        # Blender computes in float32: 1e-5 relative is its precision (pixels of ~1e-3 here).
        np.testing.assert_allclose([k.fx, k.cx, k.cy], [backend.fx[i], backend.cx[i], backend.cy[i]], rtol=1e-5)
        assert k.fy == pytest.approx(backend.fy[i], rel=fy_rtol)
        # In capture world (through the placement that stood the subject at the cursor): the backend's pose.
        c2w = capture_from_world(matrix_to_numpy(obj.matrix_world), placement) @ captures.OPENGL_TO_OPENCV
        np.testing.assert_allclose(c2w, backend.c2w[i], atol=2e-6 * max(1.0, np.abs(backend.c2w[i]).max()))


def test_non_square_pixels_shared_by_all_views_import_exactly(addon, fresh_file, tmp_path):
    scene = fresh_file
    folder = fx.nerfstudio(tmp_path / "cap", n=4)  # fx/fy = 1/1.025 for every view, per-frame focal lengths
    objects = _import(scene, folder, show_photos=True)
    assert len(objects) == 4 and objects[0].data.background_images[0].image is not None
    assert scene.render.pixel_aspect_y / scene.render.pixel_aspect_x == pytest.approx(1 / 1.025)
    _assert_blender_projects_the_backend_cameras(scene, objects, folder)


def test_views_needing_different_pixel_aspects_are_refused(addon, fresh_file, tmp_path):
    scene = fresh_file
    folder = fx.nerfstudio(tmp_path / "cap", n=4)
    data = json.loads((folder / "transforms.json").read_text())
    data["frames"][2]["fl_y"] = data["frames"][2]["fl_x"] * 1.5  # pixels a third wider than the others
    (folder / "transforms.json").write_text(json.dumps(data))
    resolution = (scene.render.resolution_x, scene.render.resolution_y)
    collections = len(bpy.data.collections)
    scene.nerfart.capture.folder = str(folder)
    with pytest.raises(RuntimeError, match=r"the views need different pixel aspects .* frame_0[02] would be 1\.4 px off"):
        bpy.ops.nerfart.import_capture()
    assert "different pixel aspects" in bpy.context.window_manager.nerfart_runtime.error
    assert len(bpy.data.collections) == collections and not [o for o in bpy.data.objects if o.type == "CAMERA"]
    assert (scene.render.resolution_x, scene.render.resolution_y) == resolution


def test_nearly_equal_pixel_aspects_share_one(addon, fresh_file, tmp_path):
    scene = fresh_file
    folder = fx.nerfstudio(tmp_path / "cap", n=4)
    data = json.loads((folder / "transforms.json").read_text())
    data["frames"][1]["fl_y"] *= 1.0005  # a per-image calibration: 0.004 px at the border
    (folder / "transforms.json").write_text(json.dumps(data))
    objects = _import(scene, folder)
    # fx and the principal point exact, fy within the 0.0005 the views differ by.
    _assert_blender_projects_the_backend_cameras(scene, objects, folder, fy_rtol=6e-4)


def test_fangzhou_import_is_what_the_backend_reads(addon, fresh_file, fangzhou_dir):
    scene = fresh_file
    objects = _import(scene, fangzhou_dir)
    assert len(objects) == 100
    _assert_blender_projects_the_backend_cameras(scene, objects[::9], fangzhou_dir)
    # The cameras.npz of the same capture imports with the same principal point (no +0.5 shift).
    scene.nerfart.capture.format = "IDR"
    idr = _import(scene, fangzhou_dir)
    from nerfart_blender.cameras_bpy import projection_intrinsics

    scene.render.resolution_x, scene.render.resolution_y = 540, 960
    cx = captures.load_capture(fangzhou_dir).cameras.cx[0]
    assert projection_intrinsics(idr[0], scene).cx == pytest.approx(cx, abs=2e-3)


def test_idr_with_the_colmap_lens_reports_it_in_the_panel(addon, fresh_file, tmp_path):
    """The distortion a cameras.npz capture now takes from the COLMAP model beside it is reported as COLMAP's is:
    where it came from (the reader's warning), and that Blender's cameras show only its pinhole part."""
    from nerfart_blender.cameras_bpy import projection_intrinsics
    from nerfart_blender.capture_bpy import CAPTURE_FORMAT_KEY

    scene = fresh_file
    folder = fx.idr(fx.colmap(tmp_path / "cap", n=4), n=4, write_images=False)
    scene.nerfart.capture.format = "IDR"
    objects = _import(scene, folder)
    assert len(objects) == 4 and scene.nerfart.capture.cameras[CAPTURE_FORMAT_KEY] == "idr"
    shown = [w.text for w in scene.nerfart.capture.warnings]
    assert shown[0].startswith("lens distortion (k1 k2 p1 p2 = 0.05, -0.02, 0.001, 0.002) taken from the COLMAP "
                               "model in sparse/0")
    assert any(w.startswith("the capture's lens distortion (k1 k2 p1 p2) cannot be shown by Blender cameras")
               for w in shown[1:])
    # The pinhole part Blender shows is still the backend's.
    backend = captures.load_capture(folder, format="idr").cameras
    assert backend.distortion[0].tolist() == [0.05, -0.02, 0.001, 0.002]
    k = projection_intrinsics(objects[0], scene)
    np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [backend.fx[0], backend.fy[0], backend.cx[0],
                                                          backend.cy[0]], rtol=1e-5)


def test_a_scene_kept_at_another_pixel_aspect_is_reported(addon, fresh_file, tmp_path):
    from nerfart_blender.capture_bpy import frame_warning, import_capture
    from nerfart_blender.core.captures import read_capture

    scene = fresh_file
    folder = fx.nerfstudio(tmp_path / "cap", n=3)  # needs fx/fy = 1/1.025; the scene stays at 1:1
    coll, _, _ = import_capture(scene, read_capture(folder), show_photos=False, set_resolution=False)
    assert (scene.render.pixel_aspect_x, scene.render.pixel_aspect_y) == (1.0, 1.0)
    assert "the scene's pixel aspect is 1:1 but the capture's cameras need 1.025:1" in frame_warning(scene, coll)
    coll, _, _ = import_capture(scene, read_capture(folder), show_photos=False, set_resolution=True)
    assert frame_warning(scene, coll) is None
