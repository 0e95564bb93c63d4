"""load_capture: format detection and preference, sibling-aware normalisation, Capture.split, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captures import FORMATS, Cameras, Capture, CaptureError, Normalization, load_capture
from captures.colmap import rotmat_to_qvec

W, H = 20, 15
K = np.array([[30.0, 0.0, 10.5], [0.0, 32.0, 7.25], [0.0, 0.0, 1.0]])
TARGET = np.array([0.5, -0.3, 10.0])
N = 6


def _c2w(i: int) -> np.ndarray:
    """OpenCV c2w of view i: an arc around TARGET at distance 4, looking at it."""
    az = math.radians(-50 + 20 * i)
    pos = TARGET + 4.0 * np.array([math.sin(az), -0.3, -math.cos(az)])
    z = (TARGET - pos) / np.linalg.norm(TARGET - pos)
    x = np.cross([0.0, 1.0, 0.0], z)  # y ≈ world +Y is "down" in this capture, as in COLMAP worlds
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x, np.cross(z, x), z])
    m[:3, 3] = pos
    return m


def _multi_format(root: Path) -> None:
    """One capture written as COLMAP text, IDR cameras.npz (with scale_mat) and LLFF poses_bounds.npy."""
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    for i in range(N):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(root / "images" / f"{i:03d}.png")
    model = root / "sparse" / "0"
    (model / "cameras.txt").write_text(f"1 PINHOLE {W} {H} 30.0 32.0 10.5 7.25\n")
    lines, npz, llff = [], {}, []
    for i in range(N):
        w2c = np.linalg.inv(_c2w(i))
        q, t = rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        lines += [f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} 1 {i:03d}.png", ""]
        p = np.eye(4)
        p[:3] = K @ w2c[:3]
        npz[f"world_mat_{i}"] = p
        s = np.diag([1.7, 1.7, 1.7, 1.0])
        s[:3, 3] = TARGET
        npz[f"scale_mat_{i}"] = s
        r = _c2w(i)[:3, :3]
        pose = np.column_stack([r[:, 1], r[:, 0], -r[:, 2], _c2w(i)[:3, 3], [H, W, 31.0]])
        llff.append(np.concatenate([pose.ravel(), [1.0, 8.0]]))
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    pts = TARGET + np.random.default_rng(0).normal(size=(60, 3)) * 0.5
    (model / "points3D.txt").write_text("".join(f"{j} {x!r} {y!r} {z!r} 1 2 3 0.5\n" for j, (x, y, z) in enumerate(pts)))
    np.savez(root / "cameras.npz", **npz)
    np.save(root / "poses_bounds.npy", np.array(llff))


@pytest.fixture
def multi(tmp_path: Path) -> Path:
    _multi_format(tmp_path)
    return tmp_path


def test_preference_and_shared_normalisation(multi: Path) -> None:
    caps = {fmt: load_capture(multi, format=fmt) for fmt in ("colmap", "idr", "llff")}
    default = load_capture(multi)
    assert default.source_format == "colmap"
    assert any("several formats present; read colmap (sparse/0)" in n for n in default.notes)
    for fmt, cap in caps.items():
        assert cap.source_format == fmt and len(cap) == N
        # Every reading uses the IDR scale_mat: its cameras are provably the same.
        assert cap.normalization.method == "idr_scale_mat", fmt
        np.testing.assert_allclose(cap.normalization.center, TARGET)
        assert cap.normalization.radius == pytest.approx(1.7)
        np.testing.assert_allclose(cap.cameras.c2w, np.stack([_c2w(i) for i in range(N)]), atol=1e-9)
    # IDR's K equals COLMAP's here, so it is read as COLMAP's +0.5 convention (no shift).
    assert caps["idr"].cameras.cx[0] == pytest.approx(10.5)
    assert any("follows COLMAP's +0.5 pixel-centre convention" in n for n in caps["idr"].notes)
    # LLFF keeps its own (centred, single-focal) intrinsics.
    assert caps["llff"].cameras.cx[0] == pytest.approx(W / 2) and caps["llff"].cameras.fy[0] == pytest.approx(31.0)


def test_points_then_cameras_when_no_scale_mat(multi: Path) -> None:
    (multi / "cameras.npz").unlink()
    cap = load_capture(multi)
    assert cap.normalization.method == "colmap_points"
    llff = load_capture(multi, format="llff")
    assert llff.normalization.method == "colmap_points"  # the sibling COLMAP model has the same cameras
    np.testing.assert_allclose(llff.normalization.center, cap.normalization.center)
    assert any("COLMAP points" in n for n in llff.notes)
    # A COLMAP model of different cameras is not used.
    lines = (multi / "sparse" / "0" / "images.txt").read_text().splitlines()
    tok = lines[0].split()
    tok[5] = repr(float(tok[5]) + 1.0)  # move image 000 by one unit
    lines[0] = " ".join(tok)
    (multi / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    assert load_capture(multi, format="llff").normalization.method == "cameras"


def test_scale_mat_of_other_cameras_is_ignored(multi: Path) -> None:
    data = dict(np.load(multi / "cameras.npz"))
    data["world_mat_2"] = data["world_mat_3"]
    np.savez(multi / "cameras.npz", **data)
    cap = load_capture(multi)
    assert cap.normalization.method == "colmap_points"
    assert any("cameras.npz ignored for normalisation" in n for n in cap.notes)


def test_direct_files(multi: Path) -> None:
    assert load_capture(multi / "cameras.npz").source_format == "idr"
    assert load_capture(multi / "poses_bounds.npy").source_format == "llff"
    assert load_capture(multi / "sparse" / "0" / "cameras.txt").source_format == "colmap"
    with pytest.raises(CaptureError, match=r"cameras\.npz: format='llff' was requested but the file is idr"):
        load_capture(multi / "cameras.npz", format="llff")
    with pytest.raises(CaptureError, match=r"cameras\.npz: split='train' selects a transforms_<split>\.json"):
        load_capture(multi / "cameras.npz", split="train")
    (multi / "notes.txt").write_text("hello")
    with pytest.raises(CaptureError, match=r"notes\.txt: not a recognised camera file"):
        load_capture(multi / "notes.txt")


def test_detection_errors(multi: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(CaptureError, match=r"empty\d*: no recognised capture format; looked in .* for: sparse/0"):
        load_capture(empty)
    with pytest.raises(CaptureError, match=r"nowhere: no such file or folder"):
        load_capture(empty / "nowhere")
    with pytest.raises(CaptureError, match=r"unknown format 'blender'; expected one of colmap, transforms_json"):
        load_capture(multi, format="blender")
    with pytest.raises(CaptureError, match="unknown split 'training'"):
        load_capture(multi, split="training")
    with pytest.raises(CaptureError, match=r"transforms_train\.json: not found; split= picks .* Capture\.split"):
        load_capture(multi, split="train")
    with pytest.raises(CaptureError, match=r"no transforms_json camera file"):
        load_capture(multi, format="transforms_json")
    assert FORMATS == ("colmap", "transforms_json", "idr", "llff")


def test_bad_pose_is_named(multi: Path) -> None:
    poses = np.load(multi / "poses_bounds.npy")
    poses[4, 3] = np.inf
    np.save(multi / "poses_bounds.npy", poses)
    with pytest.raises(CaptureError, match=r"poses_bounds\.npy: camera '004': non-finite pose"):
        load_capture(multi, format="llff")


def test_split_every_kth_from_zero() -> None:
    cams = Cameras(c2w=np.tile(np.eye(4), (10, 1, 1)), fx=1, fy=1, cx=1, cy=1, width=2, height=2)
    cap = Capture(cameras=cams, image_paths=[Path(f"{i}.png") for i in range(10)], matte_paths=None,
                  has_alpha=False, source_format="llff", root=Path("."), normalization=Normalization(np.zeros(3), 1))
    train, held = cap.split(4)
    assert held == [0, 4, 8]
    assert train == [1, 2, 3, 5, 6, 7, 9]
    assert cap.split(0) == (list(range(10)), [])
    with pytest.raises(ValueError, match="holdout_every"):
        cap.split(1)


def test_unregistered_images_and_missing_image_folders(multi: Path) -> None:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(multi / "images" / "999.png")
    cap = load_capture(multi)
    assert len(cap) == N
    assert any("1 image(s) in images/ are not registered in the COLMAP model" in n for n in cap.notes)
    with pytest.raises(CaptureError, match=r"cameras\.npz: 6 cameras .* but 7 images"):
        load_capture(multi, format="idr")
    (multi / "images").rename(multi / "photos")
    with pytest.raises(CaptureError, match=r"sparse/0: no images/ folder found next to the COLMAP model"):
        load_capture(multi)
    with pytest.raises(CaptureError, match=r"no images/ \(or image/\) folder next to the camera file"):
        load_capture(multi, format="llff")


def test_the_package_imports_only_stdlib_and_numpy() -> None:
    """Blender imports ``captures`` from the add-on's zip: no torch, Pillow, bpy, pyzmq or repository package."""
    import subprocess
    import sys

    code = ("import builtins\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('torch', 'PIL', 'bpy', 'mathutils', 'zmq', 'backend', 'blender_addon',\n"
            "                              'protocol'):\n"
            "        raise ImportError('forbidden import ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import importlib, pkgutil, captures\n"
            "for m in pkgutil.iter_modules(captures.__path__): importlib.import_module('captures.' + m.name)\n")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True, timeout=60)
