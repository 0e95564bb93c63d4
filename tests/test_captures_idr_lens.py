"""A cameras.npz takes its lens distortion from the COLMAP model beside it, only when that model is its views.

Small synthetic folders: a COLMAP text model (``sparse/0``) and a ``cameras.npz`` written from the same ring of
cameras, then made to disagree one way at a time (intrinsics, names, poses, image size, lens model). The real
capture (fangzhou_nature) is in ``tests/test_captures_real.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import load_capture, project_points
from captures.colmap import rotmat_to_qvec

W, H = 40, 30
K = (36.0, 37.5, 19.5, 15.25)  # fx fy cx cy
LENS = (0.05, -0.02, 0.001, 0.002)  # k1 k2 p1 p2
N = 6
NAMES = [f"{i:03d}.png" for i in range(N)]


def _c2w(i: int) -> np.ndarray:
    """OpenCV c2w of view i on an arc around the origin, looking at it."""
    az = math.radians(-50 + 20 * i)
    pos = 4.0 * np.array([math.sin(az), -0.3, -math.cos(az)])
    z = -pos / np.linalg.norm(pos)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x, np.cross(z, x), z])
    m[:3, 3] = pos
    return m


def _params(model: str, k: tuple[float, ...], lens: tuple[float, ...]) -> list[float]:
    """COLMAP's parameter list of ``model`` for intrinsics ``k`` and lens terms ``lens`` (in the model's order)."""
    fx, fy, cx, cy = k
    single = {"SIMPLE_PINHOLE": 0, "SIMPLE_RADIAL": 1, "RADIAL": 2}
    if model in single:
        return [fx, cx, cy, *lens[:single[model]]]
    n_lens = {"PINHOLE": 0, "OPENCV": 4, "OPENCV_FISHEYE": 4}[model]
    return [fx, fy, cx, cy, *lens[:n_lens]]


def _capture(root: Path, model: str = "OPENCV", lens: tuple[float, ...] = LENS, npz_k: tuple[float, ...] = K,
             npz_views: list[int] | None = None, model_names: list[str] = NAMES, model_size: tuple[int, int] = (W, H),
             npz_world: tuple[float, np.ndarray, np.ndarray] | None = None, moved: int | None = None,
             turned: int | None = None) -> Path:
    """Images, a COLMAP model and a cameras.npz of the same ring (each argument makes them disagree one way).

    Args:
        npz_views: the views the cameras.npz holds (default all); only their images are written.
        npz_world: ``(s, R, t)``: the cameras.npz written in the world ``x' = s R x + t`` (a pre-normalised file).
        moved: a view whose camera the COLMAP model puts 0.3 units to the side.
        turned: a view whose camera the COLMAP model turns by 1 degree about its optical axis.
    """
    views = list(range(N)) if npz_views is None else npz_views
    (root / "images").mkdir(parents=True)
    for i in views:
        Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(root / "images" / NAMES[i])
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (model_dir / "cameras.txt").write_text(
        f"1 {model} {model_size[0]} {model_size[1]} {' '.join(map(repr, _params(model, K, lens)))}\n")
    lines = []
    for i, name in enumerate(model_names):
        c2w = _c2w(i)
        if i == moved:
            c2w[:3, 3] += 0.3 * c2w[:3, 0]
        if i == turned:
            a = math.radians(1.0)
            c2w[:3, :3] = c2w[:3, :3] @ np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0],
                                                  [0, 0, 1.0]])
        w2c = np.linalg.inv(c2w)
        q, t = rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        lines += [f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} 1 {name}", ""]
    (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
    pts = np.random.default_rng(0).normal(size=(30, 3)) * 0.5
    (model_dir / "points3D.txt").write_text("".join(f"{j} {x!r} {y!r} {z!r} 1 2 3 0.5\n"
                                                    for j, (x, y, z) in enumerate(pts)))
    s, rot, shift = npz_world if npz_world is not None else (1.0, np.eye(3), np.zeros(3))
    kmat = np.array([[npz_k[0], 0, npz_k[2]], [0, npz_k[1], npz_k[3]], [0, 0, 1.0]])
    npz = {}
    for j, i in enumerate(views):
        c2w = _c2w(i)
        c2w[:3, :3], c2w[:3, 3] = rot @ c2w[:3, :3], s * rot @ c2w[:3, 3] + shift
        p = np.eye(4)
        p[:3] = kmat @ np.linalg.inv(c2w)[:3]
        npz[f"world_mat_{j}"] = p
    np.savez(root / "cameras.npz", **npz)
    return root


def test_a_matching_model_lends_its_distortion(tmp_path: Path) -> None:
    cap = load_capture(_capture(tmp_path), format="idr")
    np.testing.assert_array_equal(cap.cameras.distortion, np.tile(LENS, (N, 1)))
    assert cap.warnings == ["lens distortion (k1 k2 p1 p2 = 0.05, -0.02, 0.001, 0.002) taken from the COLMAP model "
                            "in sparse/0, which describes the same 6 views as cameras.npz (a cameras.npz has no "
                            "distortion terms)"]
    # The cameras are then the COLMAP reader's, lens included: points project to the same pixels.
    colmap = load_capture(tmp_path, format="colmap").cameras
    pts = np.random.default_rng(1).normal(size=(50, 3)) * 0.5
    for i in range(N):
        np.testing.assert_allclose(project_points(cap.cameras, i, pts)[0], project_points(colmap, i, pts)[0],
                                   atol=1e-9)
    # The camera file given directly is read the same way.
    np.testing.assert_array_equal(load_capture(tmp_path / "cameras.npz").cameras.distortion, cap.cameras.distortion)


@pytest.mark.parametrize(("model", "expected"), [("SIMPLE_RADIAL", (0.05, 0, 0, 0)), ("RADIAL", (0.05, -0.02, 0, 0))])
def test_radial_models_map_to_k1_k2(tmp_path: Path, model: str, expected: tuple[float, ...]) -> None:
    cap = load_capture(_capture(tmp_path, model=model, npz_k=(K[0], K[0], K[2], K[3])), format="idr")
    np.testing.assert_array_equal(cap.cameras.distortion, np.tile(expected, (N, 1)))
    assert "taken from the COLMAP model in sparse/0" in cap.warnings[0]


@pytest.mark.parametrize("model", ["PINHOLE", "OPENCV"])
def test_a_model_without_distortion_changes_nothing_and_warns_nothing(tmp_path: Path, model: str) -> None:
    cap = load_capture(_capture(tmp_path, model=model, lens=(0.0, 0.0, 0.0, 0.0)), format="idr")
    assert not np.any(cap.cameras.distortion) and not cap.warnings
    assert "sparse/0 describes the same 6 views as cameras.npz and models no lens distortion" in cap.notes


def test_a_cameras_npz_written_in_a_normalised_world_still_matches(tmp_path: Path) -> None:
    """Centres and orientations are compared through the best similarity, not in one shared world."""
    a = math.radians(30)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    cap = load_capture(_capture(tmp_path, npz_world=(0.25, rot, np.array([1.0, -2.0, 0.5]))), format="idr")
    np.testing.assert_array_equal(cap.cameras.distortion[0], LENS)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"npz_k": (K[0] + 3.0, *K[1:])}, "fx 36.00 in the model, 39.00 in cameras.npz for 000"),
    ({"model_names": [f"frame_{i}.png" for i in range(N)]}, "6 of its 6 images are not registered in the model, "
                                                             "e.g. 000"),
    ({"moved": 2}, "its camera positions differ, by up to 4.1% of the cameras' spread after aligning the two worlds"),
    ({"turned": 4}, "its camera orientations differ, by up to 0.83 degrees after aligning the two worlds"),
    ({"model_size": (2 * W, 2 * H)}, "the model's camera is 80x60 pixels, image 000 is 40x30"),
])
def test_a_model_of_other_views_lends_nothing_and_says_why(tmp_path: Path, kwargs: dict, reason: str) -> None:
    cap = load_capture(_capture(tmp_path, **kwargs), format="idr")
    assert not np.any(cap.cameras.distortion)
    assert len(cap.warnings) == 1
    assert cap.warnings[0].startswith("lens distortion in sparse/0 was not applied because the COLMAP model does "
                                      f"not describe the same views as cameras.npz ({reason}")
    assert cap.warnings[0].endswith("frames will be slightly off near the edges unless the photos were "
                                    "undistorted already")


def test_a_model_of_other_views_without_a_lens_is_only_a_note(tmp_path: Path) -> None:
    cap = load_capture(_capture(tmp_path, model="PINHOLE", moved=2), format="idr")
    assert not cap.warnings and not np.any(cap.cameras.distortion)
    assert any(n.startswith("sparse/0 describes other views than cameras.npz (its camera positions differ") and
               n.endswith("it has no lens distortion, so nothing is lost") for n in cap.notes)


def test_a_lens_model_we_cannot_represent_is_named(tmp_path: Path) -> None:
    cap = load_capture(_capture(tmp_path, model="OPENCV_FISHEYE"), format="idr")
    assert not np.any(cap.cameras.distortion)
    assert cap.warnings == ["lens distortion in sparse/0 was not applied because its camera model OPENCV_FISHEYE "
                            "cannot be represented here (supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, "
                            "OPENCV); frames will be slightly off near the edges unless the photos were undistorted "
                            "already"]


def test_an_unreadable_model_is_reported_not_fatal(tmp_path: Path) -> None:
    _capture(tmp_path)
    (tmp_path / "sparse" / "0" / "cameras.txt").write_text("1 OPENCV 40 30 36.0\n")  # too few parameters
    cap = load_capture(tmp_path, format="idr")
    assert not np.any(cap.cameras.distortion) and len(cap) == N
    assert cap.warnings[0].startswith("lens distortion in sparse/0 (if any) was not applied because the COLMAP "
                                      "model cannot be read (")
    assert "model OPENCV needs 8 parameters, got 1" in cap.warnings[0]


def test_frames_deleted_after_sfm_keep_the_lens_of_the_views_left(tmp_path: Path) -> None:
    """The fallback of load_capture: the model registers a deleted frame, the cameras.npz the frames present."""
    cap = load_capture(_capture(tmp_path, npz_views=[0, 1, 3, 4, 5]))
    assert cap.source_format == "idr" and len(cap) == 5
    np.testing.assert_array_equal(cap.cameras.distortion, np.tile(LENS, (5, 1)))
    assert cap.warnings[0].startswith("lens distortion (k1 k2 p1 p2 = 0.05, -0.02, 0.001, 0.002) taken from the "
                                      "COLMAP model in sparse/0, which describes the same 5 views")
