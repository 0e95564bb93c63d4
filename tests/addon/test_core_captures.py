"""Capture readers (transforms.json, COLMAP, IDR, LLFF), nerfstudio writers, presets, image headers."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import captures as C
from blender_addon.core import nerfstudio as ns
from blender_addon.core.camera_export import record_from_blender
from blender_addon.core.images import image_size
from blender_addon.core.intrinsics import BlenderCamera
from blender_addon.core.poses import OPENGL_TO_OPENCV, is_rotation, look_at, quaternion_to_matrix
from blender_addon.core.presets import PRESETS, PRESETS_BY_ID, preset_enum_items, split_negative_prompts


def write_png(path: Path, w: int, h: int) -> None:
    raw = b"".join(b"\x00" + b"\x00" * (3 * w) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_lego_transforms(lego_dir):
    cap = C.read_capture(lego_dir)
    assert cap.format == "transforms_json" and cap.path.name == "transforms_train.json"
    data = json.loads((lego_dir / "transforms_train.json").read_text())
    assert len(cap.cameras) == len(data["frames"]) == 50
    cam = cap.cameras[0]
    assert cam.name == "r_0" and cam.image is not None and cam.image.name == "r_0.png"
    fx = 0.5 * 400 / math.tan(0.5 * data["camera_angle_x"])
    assert (cam.intrinsics.width, cam.intrinsics.height) == (400, 400)
    assert cam.intrinsics.fx == pytest.approx(fx) and cam.intrinsics.fy == pytest.approx(fx)
    assert (cam.intrinsics.cx, cam.intrinsics.cy) == (200.0, 200.0)
    # OpenCV c2w in the reader; back to OpenGL it is the file's matrix, bit for bit.
    for c, f in zip(cap.cameras, data["frames"], strict=True):
        np.testing.assert_array_equal(c.c2w_blender, np.array(f["transform_matrix"]))


def test_fangzhou_formats_agree(fangzhou_dir):
    col = C.read_capture(fangzhou_dir)  # auto: COLMAP wins over cameras.npz and poses_bounds.npy
    assert col.format == "colmap" and len(col.cameras) == 100 and col.has_distortion
    idr = C.read_capture(fangzhou_dir, "idr")
    llff = C.read_capture(fangzhou_dir, "llff")
    c0 = col.cameras[0]
    assert c0.name == "000001" and (c0.intrinsics.width, c0.intrinsics.height) == (540, 960)
    assert c0.intrinsics.fx == pytest.approx(909.72, abs=0.01) and c0.intrinsics.fy == pytest.approx(934.09, abs=0.01)
    assert c0.distortion[0] == pytest.approx(0.1667, abs=1e-4)
    for a, b, c in zip(col.cameras, idr.cameras, llff.cameras, strict=True):
        assert a.name == b.name == c.name
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-6)
        np.testing.assert_allclose(a.c2w, c.c2w, atol=1e-6)
        assert is_rotation(a.c2w)
    # IDR's K is at integer pixel centres: +0.5 to ours.
    assert idr.cameras[0].intrinsics.cx == pytest.approx(c0.intrinsics.cx + 0.5, abs=1e-6)
    assert llff.cameras[0].intrinsics.cx == 270.0


def test_decompose_projection():
    k = np.array([[800.0, 0.0, 310.2], [0.0, 820.0, 242.7], [0, 0, 1]])
    w2c = np.linalg.inv(look_at((1, -4, 2), (0, 0, 0.5)) @ OPENGL_TO_OPENCV)
    p = 3.7 * (k @ w2c[:3, :4])  # arbitrary scale, as stored projections often have
    k2, w2c2 = C.decompose_projection(p)
    np.testing.assert_allclose(k2, k, atol=1e-8)
    np.testing.assert_allclose(w2c2, w2c, atol=1e-10)
    _k3, w2c3 = C.decompose_projection(-p)  # sign of P is irrelevant
    np.testing.assert_allclose(w2c3, w2c, atol=1e-10)


def test_colmap_text_model(tmp_path):
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png", 64, 48)
    (sparse / "cameras.txt").write_text("# comment\n1 PINHOLE 64 48 50 51 32.5 24.25\n2 SIMPLE_RADIAL 64 48 40 32 24 0.01\n")
    q = (math.cos(0.2), 0.0, math.sin(0.2), 0.0)
    (sparse / "images.txt").write_text(
        "# header\n"
        f"1 {q[0]} {q[1]} {q[2]} {q[3]} 0.1 0.2 3.0 1 a.png\n1.0 2.0 -1\n"
        "2 1 0 0 0 0 0 1 2 b.png\n\n"
    )
    cap = C.read_capture(tmp_path)
    assert cap.format == "colmap" and [c.name for c in cap.cameras] == ["a", "b"]
    a, b = cap.cameras
    assert (a.intrinsics.fx, a.intrinsics.fy, a.intrinsics.cx, a.intrinsics.cy) == (50, 51, 32.5, 24.25)
    assert a.image is not None and b.image is None
    assert b.distortion == (0.01, 0.0, 0.0, 0.0)
    w2c = np.eye(4)
    w2c[:3, :3] = quaternion_to_matrix(*q)
    w2c[:3, 3] = (0.1, 0.2, 3.0)
    np.testing.assert_allclose(a.c2w, np.linalg.inv(w2c), atol=1e-12)
    (sparse / "cameras.txt").write_text("1 OPENCV_FISHEYE 64 48 1 1 1 1 0 0 0 0\n")
    with pytest.raises(C.CaptureError, match="not supported"):
        C.read_capture(tmp_path)


def test_transforms_writer_round_trip(tmp_path):
    cams = [BlenderCamera(lens=40 + i, resolution_x=320, resolution_y=480, shift_x=0.05 * i) for i in range(3)]
    recs = [record_from_blender(f"Cam{i}", i + 1, look_at((3 * math.cos(i), 3 * math.sin(i), 1), (0, 0, 0)), c)
            for i, c in enumerate(cams)]
    data = ns.transforms_json(recs, [f"images/{r.name}.png" for r in recs], extra={"nerfart": {"v": 1}})
    assert "fl_x" not in data  # intrinsics differ per frame: only per-frame values
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    cap = C.read_capture(tmp_path)
    for rec, cam in zip(recs, cap.cameras, strict=True):
        np.testing.assert_allclose(cam.c2w, rec.c2w_opencv(), atol=1e-12)
        assert cam.intrinsics == rec.intrinsics
    same = ns.transforms_json(recs[:1] * 2, ["a.png", "b.png"])
    assert same["fl_x"] == recs[0].fx and same["w"] == 320


def test_transforms_errors(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "missing",
                                                                      "transform_matrix": np.eye(4).tolist()}],
                                                          "camera_angle_x": 0.5}))
    with pytest.raises(C.CaptureError, match="no image size"):
        C.read_capture(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(C.CaptureError, match="cannot read"):
        C.read_capture(tmp_path)
    with pytest.raises(C.CaptureError, match="does not exist"):
        C.read_capture(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CaptureError, match="holds no capture"):
        C.read_capture(tmp_path / "empty")


def test_camera_path_json():
    recs = [record_from_blender(f"C{i}", i, look_at((0, -5 + i, 1), (0, 0, 0)),
                                BlenderCamera(lens=35, resolution_x=640, resolution_y=360)) for i in range(4)]
    data = ns.camera_path_json(recs, fps=30000 / 1001)
    assert data["render_width"] == 640 and data["fps"] == pytest.approx(29.97, abs=1e-3)
    assert data["seconds"] == pytest.approx(4 / (30000 / 1001))
    assert len(data["camera_path"][0]["camera_to_world"]) == 16
    assert data["camera_path"][0]["fov"] == pytest.approx(math.degrees(2 * math.atan(180 / recs[0].fy)))
    back = ns.read_camera_path_json(data)
    for a, b in zip(recs, back, strict=True):
        np.testing.assert_allclose(a.c2w_opencv(), b.c2w_opencv(), atol=1e-12)
        assert b.fx == pytest.approx(a.fx)
    shifted = [record_from_blender("S", 0, np.eye(4), BlenderCamera(shift_x=0.1))]
    with pytest.raises(ValueError, match="lens shift"):
        ns.camera_path_json(shifted, 24)
    assert ns.camera_path_json(shifted, 24, approximate=True)["render_width"] == 1920


def test_image_size_headers(tmp_path, lego_dir):
    write_png(tmp_path / "x.png", 17, 9)
    assert image_size(tmp_path / "x.png") == (17, 9)
    assert image_size(lego_dir / "train" / "r_0.png") == (400, 400)
    jpg = tmp_path / "x.jpg"  # minimal JPEG: SOI, APP0 (skipped), SOF0 with 33x21
    jpg.write_bytes(b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", 21, 33)
                    + b"\x01\x01\x11\x00" + b"\xff\xd9")
    assert image_size(jpg) == (33, 21)
    exr = tmp_path / "x.exr"
    exr.write_bytes(b"\x76\x2f\x31\x01\x02\x00\x00\x00" + b"dataWindow\x00box2i\x00" + struct.pack("<i", 16)
                    + struct.pack("<iiii", 0, 0, 99, 49) + b"\x00")
    assert image_size(exr) == (100, 50)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a PNG"):
        image_size(tmp_path / "x.txt")


def test_presets():
    ids = [p.id for p in PRESETS]
    assert len(ids) == len(set(ids)) and all(i == i.upper() for i in ids)
    assert PRESETS_BY_ID["VAN_GOGH"].prompt == "painting, oil on canvas, Vincent van gogh self-portrait style"
    assert {"MARBLE", "BOTERO", "MONA_LISA", "ZOMBIE", "PIXAR", "SKETCH", "TOLKIEN_ELF", "FAUVISM",
            "VOLDEMORT"} <= set(ids)
    assert len(preset_enum_items()[0]) == 3
    assert split_negative_prompts("a; b\n\n c ") == ["a", "b", "c"]


def test_core_imports_without_bpy(repo_root):
    """``core/`` must import with bpy and mathutils blocked (the add-on package's own import included)."""
    code = (
        "import sys; sys.modules['bpy'] = None; sys.modules['mathutils'] = None; sys.modules['torch'] = None\n"
        "import importlib, pkgutil, blender_addon.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('blender_addon.core.' + m.name)\n"
        "print('ok', sorted(n for n in sys.modules if n.startswith('blender_addon')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "blender_addon.core.intrinsics" in out.stdout
