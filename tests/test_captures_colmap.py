"""COLMAP sparse model reader (binary and text), pinned against hand projections."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import CaptureError, load_capture, project_points
from captures.colmap import (
    cameras_from_colmap,
    qvec_to_rotmat,
    read_colmap_model,
    rotmat_to_qvec,
)

W, H = 16, 12
X = np.array([0.5, -0.5, 0.0])  # the one triangulated point
C45 = math.cos(math.radians(45))
# (image id, name, camera id, qvec w x y z, tvec); ids deliberately not in name order.
IMAGES = [
    (1, "b.png", 2, (C45, 0.0, C45, 0.0), (0.0, 0.0, 5.0)),  # 90° about +Y
    (2, "a.png", 1, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 5.0)),
    (3, "c.png", 3, (1.0, 0.0, 0.0, 0.0), (0.1, 0.2, 6.0)),
]
# (camera id, model id, model name, params)
CAMERAS = [
    (1, 1, "PINHOLE", (50.0, 55.0, 8.5, 6.5)),
    (2, 2, "SIMPLE_RADIAL", (40.0, 8.0, 6.0, 0.2)),
    (3, 4, "OPENCV", (45.0, 47.0, 7.9, 6.1, 0.05, -0.01, 0.002, -0.003)),
]


def _expected_uv() -> dict[str, tuple[float, float]]:
    """The point's pixel in each image, computed by hand from the definitions above."""
    out = {}
    # a.png: PINHOLE, R = I, t = (0, 0, 5): camera point (0.5, -0.5, 5).
    out["a.png"] = (50 * 0.1 + 8.5, 55 * -0.1 + 6.5)
    # b.png: R_y(90) maps (x, y, z) -> (z, y, -x); camera point (0, -0.5, 4.5); SIMPLE_RADIAL k = 0.2.
    y = -0.5 / 4.5
    out["b.png"] = (8.0, 40 * y * (1 + 0.2 * y * y) + 6.0)
    # c.png: OPENCV, camera point (0.6, -0.3, 6).
    x, y = 0.6 / 6, -0.3 / 6
    k1, k2, p1, p2 = 0.05, -0.01, 0.002, -0.003
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    out["c.png"] = (45 * xd + 7.9, 47 * yd + 6.1)
    return out


def write_bin(model: Path, cameras: list = CAMERAS, images: list = IMAGES) -> None:
    model.mkdir(parents=True, exist_ok=True)
    uv = _expected_uv()
    with open(model / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cameras)))
        for cam_id, model_id, _, params in cameras:
            f.write(struct.pack("<iiQQ", cam_id, model_id, W, H) + struct.pack(f"<{len(params)}d", *params))
    with open(model / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for image_id, name, cam_id, q, t in images:
            f.write(struct.pack("<i7di", image_id, *q, *t, cam_id) + name.encode() + b"\0")
            f.write(struct.pack("<Q", 2))
            f.write(struct.pack("<ddq", *uv.get(name, (0.0, 0.0)), 7) + struct.pack("<ddq", 1.5, 2.5, -1))
    with open(model / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<Q3d3BdQ", 7, *X, 200, 100, 50, 0.25, len(images)))
        for image_id, *_ in images:
            f.write(struct.pack("<ii", image_id, 0))


def write_txt(model: Path) -> None:
    model.mkdir(parents=True, exist_ok=True)
    uv = _expected_uv()
    cams = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    cams += [f"{cid} {name} {W} {H} " + " ".join(repr(p) for p in params) for cid, _, name, params in CAMERAS]
    (model / "cameras.txt").write_text("\n".join(cams) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for image_id, name, cam_id, q, t in IMAGES:
        lines.append(f"{image_id} {' '.join(map(repr, q))} {' '.join(map(repr, t))} {cam_id} {name}")
        lines.append(f"{uv[name][0]!r} {uv[name][1]!r} 7 1.5 2.5 -1")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    track = " ".join(f"{image_id} 0" for image_id, *_ in IMAGES)
    (model / "points3D.txt").write_text(f"# 3D point list\n7 {X[0]} {X[1]} {X[2]} 200 100 50 0.25 {track}\n")


def _images(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for _, name, *_ in IMAGES:
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(root / "images" / name)


@pytest.mark.parametrize("writer", [write_bin, write_txt])
def test_projection_by_hand(tmp_path: Path, writer: Callable[[Path], None]) -> None:
    writer(tmp_path / "sparse" / "0")
    model = read_colmap_model(tmp_path / "sparse" / "0")
    assert [im.name for im in model.images] == ["a.png", "b.png", "c.png"]  # sorted by name, not id
    assert model.points3d.shape == (1, 3) and model.points3d_ids.tolist() == [7]
    np.testing.assert_allclose(model.points3d[0], X)
    assert model.points3d_rgb.tolist() == [[200, 100, 50]]
    cams = cameras_from_colmap(model)
    assert cams.names == ["a", "b", "c"]
    np.testing.assert_allclose(cams.distortion[1], [0.2, 0, 0, 0])
    np.testing.assert_allclose(cams.fx, [50, 40, 45])
    np.testing.assert_allclose(cams.fy, [55, 40, 47])
    expected = _expected_uv()
    for i, im in enumerate(model.images):
        uv, depth = project_points(cams, i, X[None])
        assert depth[0] > 0
        np.testing.assert_allclose(uv[0], expected[im.name], atol=1e-9)
        # The stored observation of point 7 is the same pixel.
        np.testing.assert_allclose(im.xys[im.point3d_ids == 7][0], expected[im.name], atol=1e-9)
    # The camera centre of b.png: C = -R^T t = -(R_y(90)^T (0, 0, 5)) = (5, 0, 0).
    np.testing.assert_allclose(cams.c2w[1, :3, 3], [5.0, 0.0, 0.0], atol=1e-12)


def test_binary_and_text_agree(tmp_path: Path) -> None:
    write_bin(tmp_path / "bin")
    write_txt(tmp_path / "txt")
    a, b = cameras_from_colmap(read_colmap_model(tmp_path / "bin")), cameras_from_colmap(read_colmap_model(tmp_path / "txt"))
    np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
    for key in ("fx", "fy", "cx", "cy", "distortion", "width", "height"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key))


def test_quaternion_round_trip() -> None:
    rng = np.random.default_rng(1)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q) * np.sign(q[0])
        np.testing.assert_allclose(rotmat_to_qvec(qvec_to_rotmat(q)), q, atol=1e-9)
    np.testing.assert_allclose(qvec_to_rotmat([C45, 0, C45, 0]), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)


def test_load_capture_paths(tmp_path: Path) -> None:
    write_bin(tmp_path / "sparse" / "0")
    _images(tmp_path)
    for given in (tmp_path, tmp_path / "sparse", tmp_path / "sparse" / "0", tmp_path / "sparse" / "0" / "images.bin"):
        cap = load_capture(given)
        assert cap.source_format == "colmap" and cap.root == tmp_path
        assert cap.image_paths == [tmp_path / "images" / n for n in ("a.png", "b.png", "c.png")]
        assert cap.points3d is not None and cap.points3d.shape == (1, 3)
        assert cap.matte_paths is None and not cap.has_matte


def test_missing_image_files(tmp_path: Path) -> None:
    # Registered images that are gone are skipped (tests/test_captures_layouts.py); what is left must suffice.
    write_bin(tmp_path / "sparse" / "0")
    _images(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(CaptureError, match=r"sparse/0: only 2 view\(s\); at least 3 are needed"):
        load_capture(tmp_path)
    for name in ("a.png", "c.png"):
        (tmp_path / "images" / name).unlink()
    (tmp_path / "images" / "other.png").write_bytes(b"")
    with pytest.raises(CaptureError, match=r"images: none of the 3 images the COLMAP model .* registers is in the "
                                           r"folder \(e\.g\. a\.png\)"):
        load_capture(tmp_path)


def test_unsupported_model(tmp_path: Path) -> None:
    cams = [*CAMERAS[:2], (3, 5, "OPENCV_FISHEYE", (45.0, 47.0, 7.9, 6.1, 0.05, -0.01, 0.002, -0.003))]
    write_bin(tmp_path / "sparse" / "0", cameras=cams)
    model = read_colmap_model(tmp_path / "sparse" / "0")
    with pytest.raises(CaptureError, match=r"cameras\.bin: camera 3 uses the COLMAP model OPENCV_FISHEYE, which is "
                                           r"not supported"):
        cameras_from_colmap(model)


def test_truncated_and_inconsistent_files(tmp_path: Path) -> None:
    model = tmp_path / "m"
    write_bin(model)
    data = (model / "images.bin").read_bytes()
    (model / "images.bin").write_bytes(data[:-5])
    with pytest.raises(CaptureError, match=r"images\.bin: truncated or corrupt COLMAP file"):
        read_colmap_model(model)
    write_bin(model, cameras=CAMERAS[:2])  # c.png refers to camera 3, now undefined
    with pytest.raises(CaptureError, match=r"images\.bin: image 'c\.png' references camera id 3"):
        read_colmap_model(model)
    (model / "cameras.bin").write_bytes(struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, 42, W, H))
    with pytest.raises(CaptureError, match=r"cameras\.bin: camera 1 has unknown COLMAP model id 42"):
        read_colmap_model(model)


def test_text_errors_name_the_line(tmp_path: Path) -> None:
    write_txt(tmp_path)
    (tmp_path / "cameras.txt").write_text("# header\n1 PINHOLE 16 12 50 55 8.5\n")
    with pytest.raises(CaptureError, match=r"cameras\.txt, line 2: model PINHOLE needs 4 parameters, got 3"):
        read_colmap_model(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 WEIRD 16 12 50\n")
    with pytest.raises(CaptureError, match=r"cameras\.txt, line 1: unknown COLMAP camera model 'WEIRD'"):
        read_colmap_model(tmp_path)


def test_text_images_with_empty_keypoint_lines(tmp_path: Path) -> None:
    write_txt(tmp_path)
    lines = [f"{i} 1 0 0 0 0 0 {4 + i} 1 img {i}.png\n\n" for i in range(3)]  # names with spaces, no keypoints
    (tmp_path / "images.txt").write_text("# comment\n" + "".join(lines))
    model = read_colmap_model(tmp_path)
    assert [im.name for im in model.images] == ["img 0.png", "img 1.png", "img 2.png"]
    assert all(im.xys.shape == (0, 2) for im in model.images)
    np.testing.assert_allclose(cameras_from_colmap(model).c2w[2, :3, 3], [0, 0, -6])


def test_missing_model_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match=r"empty: not a COLMAP sparse model"):
        read_colmap_model(tmp_path / "empty")
