"""transforms.json reader (nerfstudio, instant-ngp, NeRF-synthetic), pinned against hand projections."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import CaptureError, load_capture, project_points
from captures.transforms_json import read_transforms_json

W, H = 16, 12
POINT = np.array([[0.4, 0.3, 0.0]])
# Three OpenGL camera-to-world matrices looking at the origin from +Z, +X and +Y (columns X, Y, Z, position).
GL_POSES = [
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]],
    [[0, 0, 1, 4], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]],
    [[1, 0, 0, 0], [0, 0, 1, 4], [0, -1, 0, 0], [0, 0, 0, 1]],
]


def _png(path: Path, w: int = W, h: int = H, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode).save(path)


def _nerfstudio(root: Path, **overrides: object) -> Path:
    frames = []
    for i, pose in enumerate(GL_POSES):
        _png(root / "images" / f"frame_{i:05d}.png")
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": pose})
    frames[1]["fl_x"] = 30.0  # per-frame override of the global focal
    data = {"camera_model": "OPENCV", "fl_x": 20.0, "fl_y": 22.0, "cx": 8.25, "cy": 5.75, "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames, **overrides}
    path = root / "transforms.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def test_nerfstudio_projection_by_hand(tmp_path: Path) -> None:
    cap = read_transforms_json(_nerfstudio(tmp_path))
    cams = cap.cameras
    assert [p.name for p in cap.image_paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert cap.mask_paths is None
    # View 0 (at +Z): OpenCV camera coordinates of the point are (0.4, -0.3, 4).
    uv, z = project_points(cams, 0, POINT)
    assert z[0] == pytest.approx(4.0)
    assert uv[0] == pytest.approx([20 * 0.4 / 4 + 8.25, 22 * -0.3 / 4 + 5.75])
    # View 1 (at +X, per-frame fl_x 30, fl_y from the global 22): camera coordinates (0, -0.3, 3.6).
    uv, z = project_points(cams, 1, POINT)
    assert z[0] == pytest.approx(3.6)
    assert uv[0] == pytest.approx([8.25, 22 * -0.3 / 3.6 + 5.75])
    assert cams.fx[1] == 30.0 and cams.fy[1] == 22.0
    # View 2 (at +Y looking down): camera coordinates (0.4, 0, 3.7).
    uv, z = project_points(cams, 2, POINT)
    assert z[0] == pytest.approx(3.7)
    assert uv[0] == pytest.approx([20 * 0.4 / 3.7 + 8.25, 5.75])


def test_distortion_and_3x4_matrices(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path, k1=0.1, p2=0.02)
    data = json.loads(path.read_text())
    for f in data["frames"]:
        f["transform_matrix"] = f["transform_matrix"][:3]
    path.write_text(json.dumps(data))
    cams = read_transforms_json(path).cameras
    np.testing.assert_allclose(cams.distortion, [[0.1, 0.0, 0.0, 0.02]] * 3)
    x, y = 0.4 / 4, -0.3 / 4
    r2 = x * x + y * y
    xd = x * (1 + 0.1 * r2) + 0.02 * (r2 + 2 * x * x)
    yd = y * (1 + 0.1 * r2) + 2 * 0.02 * x * y
    uv, _ = project_points(cams, 0, POINT)
    assert uv[0] == pytest.approx([20 * xd + 8.25, 22 * yd + 5.75])


def test_nerf_synthetic_camera_angle_and_extensionless_paths(tmp_path: Path) -> None:
    frames = []
    for i, pose in enumerate(GL_POSES):
        _png(tmp_path / "train" / f"r_{i}.png", mode="RGBA")
        frames.append({"file_path": f"./train/r_{i}", "rotation": 0.1, "transform_matrix": pose})
    angle = 2 * math.atan(0.5 * W / 20.0)  # a focal of exactly 20 px at the file's width
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    cap = load_capture(tmp_path)
    assert cap.source_format == "transforms_json" and cap.has_alpha and cap.has_matte
    assert cap.image_paths[1] == tmp_path / "train" / "r_1.png"
    cams = cap.cameras
    np.testing.assert_allclose(cams.fx, 20.0)
    np.testing.assert_allclose(cams.fy, 20.0)
    np.testing.assert_allclose(cams.cx, W / 2)
    np.testing.assert_allclose(cams.cy, H / 2)
    assert (cams.width[0], cams.height[0]) == (W, H)
    uv, _ = project_points(cams, 0, POINT)
    assert uv[0] == pytest.approx([20 * 0.1 + 8.0, 20 * -0.075 + 6.0])


def test_camera_angle_y_sets_fy(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path)
    data = json.loads(path.read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del data[key]
    del data["frames"][1]["fl_x"]
    data["camera_angle_x"] = 2 * math.atan(8 / 20.0)
    data["camera_angle_y"] = 2 * math.atan(6 / 25.0)
    path.write_text(json.dumps(data))
    cams = read_transforms_json(path).cameras
    np.testing.assert_allclose(cams.fx, 20.0)
    np.testing.assert_allclose(cams.fy, 25.0)


def test_mask_path_per_frame(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path)
    data = json.loads(path.read_text())
    for i, f in enumerate(data["frames"]):
        _png(tmp_path / "masks" / f"mask_{i}.png", mode="L")
        f["mask_path"] = f"masks/mask_{i}"
    path.write_text(json.dumps(data))
    cap = load_capture(tmp_path)
    assert cap.matte_paths == [tmp_path / "masks" / f"mask_{i}.png" for i in range(3)]
    assert cap.has_matte and not cap.has_alpha

    del data["frames"][2]["mask_path"]
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"transforms\.json, frames\[2\]: 'mask_path' is given for some"):
        load_capture(tmp_path)


def test_split_selection(tmp_path: Path) -> None:
    poses = {"train": GL_POSES, "test": [*GL_POSES, GL_POSES[0]]}
    for split, ps in poses.items():
        frames = []
        for i, pose in enumerate(ps):
            _png(tmp_path / split / f"r_{i}.png", mode="RGBA")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    assert len(load_capture(tmp_path)) == 3  # default: train
    assert len(load_capture(tmp_path, split="train")) == 3
    assert len(load_capture(tmp_path, split="test")) == 4
    assert load_capture(tmp_path, split="test").image_paths[0].parent.name == "test"
    with pytest.raises(CaptureError, match=r"transforms_val\.json: not found"):
        load_capture(tmp_path, split="val")
    # A transforms.json, when present, is the default over the split files.
    _nerfstudio(tmp_path)
    assert load_capture(tmp_path).image_paths[0].parent.name == "images"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"is_fisheye": True}, "fisheye cameras .* not supported"),
        ({"camera_model": "OPENCV_FISHEYE"}, "camera_model 'OPENCV_FISHEYE' is not supported"),
        ({"camera_model": "EQUIRECTANGULAR"}, "camera_model 'EQUIRECTANGULAR' is not supported"),
        ({"k3": 0.01}, "k3=0.01 is not supported"),
        ({"frames": []}, "no 'frames' list"),
        ({"fl_x": "20"}, "'fl_x' must be a number"),
    ],
)
def test_refused_dialects(tmp_path: Path, override: dict, message: str) -> None:
    path = _nerfstudio(tmp_path, **override)
    with pytest.raises(CaptureError, match=message) as err:
        read_transforms_json(path)
    assert str(path) in str(err.value)


def test_missing_focal(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path)
    data = json.loads(path.read_text())
    del data["fl_x"], data["fl_y"], data["frames"][1]["fl_x"]
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"frames\[0\]: no focal length"):
        read_transforms_json(path)


def test_bad_matrix_and_missing_image(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path)
    data = json.loads(path.read_text())
    data["frames"][2]["transform_matrix"] = [[1, 0, 0], [0, 1, 0]]
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"frames\[2\]: 'transform_matrix' must be 4x4 or 3x4"):
        read_transforms_json(path)
    data = json.loads(path.read_text())
    data["frames"][2]["transform_matrix"] = GL_POSES[2]
    data["frames"][2]["file_path"] = "images/nope"
    path.write_text(json.dumps(data))
    with pytest.raises(CaptureError, match=r"images/nope: image file not found"):
        read_transforms_json(path)


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "transforms.json"
    path.write_text('{\n  "fl_x": 20,\n  "frames": [,]\n}\n')
    with pytest.raises(CaptureError, match=r"transforms\.json, line 3 column 14: invalid JSON"):
        load_capture(path)


def test_non_finite_pose_is_a_capture_error(tmp_path: Path) -> None:
    path = _nerfstudio(tmp_path)
    data = json.loads(path.read_text())
    data["frames"][1]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(data))  # json.dumps writes NaN, which Python's json reads back
    with pytest.raises(CaptureError, match=r"transforms\.json: camera 'frame_00001': non-finite pose"):
        load_capture(tmp_path)


def test_declared_size_must_match_the_image(tmp_path: Path) -> None:
    _nerfstudio(tmp_path, w=W * 2, h=H * 2)
    with pytest.raises(CaptureError, match=r"frame_00000\.png: image is 16x12 but transforms\.json gives"):
        load_capture(tmp_path)
