"""Real-world layouts: frames deleted after SfM, a cameras.npz written for the folder as it is, mattes by index."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.jobs.local import run_job_locally
from captures import CaptureError, load_capture
from captures.colmap import rotmat_to_qvec

W, H = 12, 9
K = np.array([[20.0, 0.0, 6.5], [0.0, 21.0, 4.25], [0.0, 0.0, 1.0]])
N = 6


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


def _colmap(root: Path, names: list[str]) -> None:
    """A COLMAP text model registering ``names`` (view i gets ``_c2w(i)``) and a few points."""
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 PINHOLE {W} {H} 20.0 21.0 6.5 4.25\n")
    lines = []
    for i, name in enumerate(names):
        w2c = np.linalg.inv(_c2w(i))
        q, t = rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        lines += [f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} 1 {name}", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    pts = np.random.default_rng(0).normal(size=(30, 3)) * 0.5
    (model / "points3D.txt").write_text("".join(f"{j} {x!r} {y!r} {z!r} 1 2 3 0.5\n" for j, (x, y, z) in enumerate(pts)))


def _idr(root: Path, views: list[int]) -> None:
    """A cameras.npz (K at COLMAP's pixel centres, as colmap2volsdf writes it) with one camera per view given."""
    npz = {}
    for j, i in enumerate(views):
        p = np.eye(4)
        p[:3] = K @ np.linalg.inv(_c2w(i))[:3]
        npz[f"world_mat_{j}"] = p
    np.savez(root / "cameras.npz", **npz)


def _images(root: Path, names: list[str], folder: str = "images") -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(root / folder / name)


NAMES = [f"{i:03d}.png" for i in range(N)]


def test_deleted_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    _colmap(tmp_path, NAMES)
    _images(tmp_path, NAMES)
    for gone in ("001.png", "004.png"):
        (tmp_path / "images" / gone).unlink()
    cap = load_capture(tmp_path)
    assert cap.source_format == "colmap" and len(cap) == 4
    assert [p.name for p in cap.image_paths] == ["000.png", "002.png", "003.png", "005.png"]
    np.testing.assert_allclose(cap.cameras.c2w, np.stack([_c2w(i) for i in (0, 2, 3, 5)]), atol=1e-9)
    assert cap.warnings == ["2 of 6 images registered in the COLMAP model are not in images/ and are skipped "
                            "(e.g. 001.png); the 4 present are used"]


def test_a_cameras_npz_covering_exactly_the_present_images_is_preferred(tmp_path: Path) -> None:
    _colmap(tmp_path, NAMES)
    _images(tmp_path, NAMES)
    (tmp_path / "images" / "002.png").unlink()
    _idr(tmp_path, [0, 1, 3, 4, 5])  # written after the frame was deleted: one camera per image present
    cap = load_capture(tmp_path)
    assert cap.source_format == "idr" and len(cap) == 5 and not cap.warnings
    assert cap.notes[0] == ("several formats present; read idr (cameras.npz), as the COLMAP model registers 1 "
                            "image(s) that are gone (e.g. 002.png) and cameras.npz has exactly one camera per image "
                            "present; format='colmap' reads the model's remaining views, rather than colmap (sparse/0)")
    np.testing.assert_allclose(cap.cameras.c2w, np.stack([_c2w(i) for i in (0, 1, 3, 4, 5)]), atol=1e-9)
    # The COLMAP model beside it has the same K: the file follows COLMAP's pixel centres (no +0.5 shift).
    assert cap.cameras.cx[0] == pytest.approx(6.5)
    forced = load_capture(tmp_path, format="colmap")
    assert forced.source_format == "colmap" and len(forced) == 5 and "1 of 6 images" in forced.warnings[0]


def test_renamed_frames_fall_back_to_a_matching_cameras_npz(tmp_path: Path) -> None:
    _colmap(tmp_path, NAMES)
    _images(tmp_path, [f"frame_{i}.png" for i in range(N)])  # renamed after SfM: no registered name exists
    with pytest.raises(CaptureError, match=r"images: none of the 6 images the COLMAP model .* registers is in the "
                                           r"folder \(e\.g\. 000\.png\)"):
        load_capture(tmp_path)
    _idr(tmp_path, list(range(N)))
    cap = load_capture(tmp_path)
    assert cap.source_format == "idr" and [p.name for p in cap.image_paths] == [f"frame_{i}.png" for i in range(N)]


def test_a_stale_cameras_npz_is_not_preferred(tmp_path: Path) -> None:
    _colmap(tmp_path, NAMES)
    _images(tmp_path, NAMES)
    _idr(tmp_path, list(range(N)))  # written before the deletion, like the COLMAP model
    (tmp_path / "images" / "002.png").unlink()
    cap = load_capture(tmp_path)
    assert cap.source_format == "colmap" and len(cap) == 5 and "1 of 6 images" in cap.warnings[0]
    with pytest.raises(CaptureError, match=r"cameras\.npz: 6 cameras .* but 5 images"):
        load_capture(tmp_path, format="idr")


def test_mattes_named_by_index_pair_by_sorted_order(tmp_path: Path) -> None:
    images = [f"img_{i:04d}.jpg" for i in range(N)]
    _colmap(tmp_path, images)
    _images(tmp_path, images)
    _images(tmp_path, [f"{i}.png" for i in range(N)], folder="matte")  # unpadded: 10.png would sort before 2.png
    cap = load_capture(tmp_path)
    assert cap.matte_paths is not None and [p.name for p in cap.matte_paths] == [f"{i}.png" for i in range(N)]
    assert cap.warnings == ["mattes paired with the images by sorted order (matte/0.png is the matte of "
                            "img_0000.jpg, ..., matte/5.png of img_0005.jpg): no matte has an image's name and both "
                            "folders hold 6 files"]
    # A deleted frame: the folder still pairs one to one, so each remaining image keeps its own matte.
    (tmp_path / "images" / "img_0003.jpg").unlink()
    (tmp_path / "matte" / "3.png").unlink()
    cap = load_capture(tmp_path)
    assert [p.name for p in cap.matte_paths] == ["0.png", "1.png", "2.png", "4.png", "5.png"]


def test_mattes_that_cannot_be_paired_are_refused(tmp_path: Path) -> None:
    images = [f"img_{i:04d}.jpg" for i in range(N)]
    _colmap(tmp_path, images)
    _images(tmp_path, images)
    _images(tmp_path, [f"{i:04d}.png" for i in range(N - 1)], folder="matte")  # one matte short
    with pytest.raises(CaptureError, match=r"matte: no matte for 6 of 6 images, .* 5 mattes found"):
        load_capture(tmp_path)
    _images(tmp_path, ["img_0000.png"] + [f"{i:04d}.png" for i in range(N - 1, N + 4)], folder="matte")
    with pytest.raises(CaptureError, match=r"no matte for 5 of 6 images"):  # partly by name: no guessing
        load_capture(tmp_path)


def test_the_reconstruct_job_reports_capture_warnings(tmp_path: Path) -> None:
    """A skipped frame reaches the job's progress message and its outputs (the command line prints both)."""
    _images(tmp_path / "cap", NAMES)
    _colmap(tmp_path / "cap", NAMES)
    (tmp_path / "cap" / "images" / "005.png").unlink()
    messages: list = []
    rec = run_job_locally("reconstruct", {"capture_path": str(tmp_path / "cap"), "preset": "tiny", "steps": 2,
                                          "holdout_every": 0}, tmp_path / "work", "cpu", messages.append)
    assert rec.state == "done", rec.error
    expected = "1 of 6 images registered in the COLMAP model are not in images/ and are skipped"
    assert any(expected in m.content.get("message", "") for m in messages if m.type == "progress")
    assert rec.outputs["capture_warnings"][0].startswith(expected)
