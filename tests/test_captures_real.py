"""The readers on the real captures: fangzhou_nature (COLMAP / IDR / LLFF) and NeRF-synthetic lego.

The data lives in ``shared/data`` beside the repository (CI clones it there), or where ``NERFART_DATA`` says (a
git worktree sits one folder deeper); the tests skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.nerf.capture_images import load_images
from backend.nerf.rays import undistort
from captures import Cameras, Capture, CaptureError, load_capture, project_points
from captures.colmap import ColmapModel, read_colmap_model
from captures.idr import read_idr_cameras
from captures.normalize import normalization_from_cameras, normalization_from_points

DATA = Path(os.environ.get("NERFART_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FANGZHOU = DATA / "fangzhou_nature"
LEGO = DATA / "lego_half_res"
needs_fangzhou = pytest.mark.skipif(not (FANGZHOU / "sparse" / "0").is_dir(),
                                    reason=f"real capture not found at {FANGZHOU}")
needs_lego = pytest.mark.skipif(not (LEGO / "transforms_train.json").is_file(),
                                reason=f"NeRF-synthetic lego not found at {LEGO}")


@pytest.fixture(scope="module")
def fz() -> Capture:
    return load_capture(FANGZHOU)


@pytest.fixture(scope="module")
def fz_model() -> ColmapModel:
    return read_colmap_model(FANGZHOU / "sparse" / "0")


def _observations(model: ColmapModel, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangulated keypoints of image i: ``(n, 3)`` world points and ``(n, 2)`` observed pixels."""
    lookup = model.point_lookup()
    im = model.images[i]
    ok = im.point3d_ids >= 0
    return model.points3d[[lookup[int(p)] for p in im.point3d_ids[ok]]], im.xys[ok]


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``dst ≈ s R src + t`` (least squares) between two ``(n, 3)`` point sets."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return s, rot, mu_d - s * rot @ mu_s


@needs_fangzhou
def test_fangzhou_colmap_reader(fz: Capture) -> None:
    assert fz.source_format == "colmap" and len(fz) == 100
    cams = fz.cameras
    assert set(cams.width.tolist()) == {540} and set(cams.height.tolist()) == {960}
    np.testing.assert_allclose([cams.fx[0], cams.fy[0], cams.cx[0], cams.cy[0]], [909.72, 934.09, 343.48, 586.06],
                               atol=0.01)
    np.testing.assert_allclose(cams.distortion[0], [0.1667, -0.1297, 0.0609, 0.0263], atol=1e-4)
    assert fz.image_paths[0] == FANGZHOU / "images" / "000001.png" and cams.names[-1] == "000100"
    assert fz.points3d is not None and fz.points3d.shape == (5362, 3)
    assert fz.matte_paths is not None and fz.matte_paths[7] == FANGZHOU / "matte" / "000008.png"
    assert fz.has_matte and not fz.has_alpha


@needs_fangzhou
def test_fangzhou_reprojection_matches_colmap_keypoints(fz: Capture, fz_model: ColmapModel) -> None:
    res = []
    for i in range(len(fz_model.images)):
        pts, obs = _observations(fz_model, i)
        uv, depth = project_points(fz.cameras, i, pts)
        assert np.all(depth > 0)
        res.append(uv - obs)
    r = np.concatenate(res)
    assert len(r) > 50_000
    # Bundle adjustment leaves zero-mean residuals in COLMAP's own (+0.5) convention; ~0.7 px median.
    assert np.all(np.abs(r.mean(0)) < 0.02)
    err = np.linalg.norm(r, axis=1)
    assert np.median(err) < 1.0 and np.quantile(err, 0.99) < 3.0


@needs_fangzhou
def test_fangzhou_idr_follows_colmap_pixel_centres(fz: Capture, fz_model: ColmapModel) -> None:
    """cameras.npz copies COLMAP's K; reprojection decides which pixel-centre convention that K is in.

    Keypoints are first freed of COLMAP's lens distortion, because cameras.npz is a pinhole model.
    """
    cc = fz.cameras
    offsets, medians = {}, {}
    for conv in ("half", "integer"):
        idr = read_idr_cameras(FANGZHOU / "cameras.npz", pixel_centers=conv).cameras
        res = []
        for i in range(0, 100, 3):
            pts, obs = _observations(fz_model, i)
            xy = np.stack([(obs[:, 0] - cc.cx[i]) / cc.fx[i], (obs[:, 1] - cc.cy[i]) / cc.fy[i]], -1)
            xy = undistort(torch.from_numpy(xy), torch.from_numpy(cc.distortion[i])).numpy()
            obs_pinhole = xy * [cc.fx[i], cc.fy[i]] + [cc.cx[i], cc.cy[i]]
            res.append(project_points(idr, i, pts)[0] - obs_pinhole)
        r = np.concatenate(res)
        offsets[conv], medians[conv] = r.mean(0), np.median(np.linalg.norm(r, axis=1))
    np.testing.assert_allclose(offsets["half"], [0.0, 0.0], atol=0.03)
    np.testing.assert_allclose(offsets["integer"], [0.5, 0.5], atol=0.03)
    assert medians["half"] < medians["integer"] - 0.1
    auto = load_capture(FANGZHOU, format="idr")
    np.testing.assert_allclose([auto.cameras.cx[0], auto.cameras.cy[0]], [cc.cx[0], cc.cy[0]], atol=1e-6)


def _mean_reprojection_px(model: ColmapModel, cameras: Cameras) -> float:
    """Mean distance in pixels between every observation of a COLMAP point (its track) and its projection."""
    err = []
    for i in range(len(model.images)):
        pts, obs = _observations(model, i)
        err.append(np.linalg.norm(project_points(cameras, i, pts)[0] - obs, axis=1))
    return float(np.concatenate(err).mean())


@needs_fangzhou
def test_fangzhou_idr_takes_the_lens_from_colmap(fz: Capture, fz_model: ColmapModel) -> None:
    """cameras.npz has no distortion terms; the COLMAP model beside it (same views) lends its OPENCV lens.

    Measured over all 59,976 observations of the 5,362 points at 540x960: 11.87 px mean as NeRF-Art reads the
    file (a pinhole fitted to distorted photos), 0.77 px with the model's lens, the COLMAP reader's own figure.
    """
    idr = load_capture(FANGZHOU, format="idr")
    np.testing.assert_array_equal(idr.cameras.distortion, fz.cameras.distortion)
    assert idr.warnings == ["lens distortion (k1 k2 p1 p2 = 0.1667, -0.1297, 0.06086, 0.02629) taken from the COLMAP "
                            "model in sparse/0, which describes the same 100 views as cameras.npz (a cameras.npz has "
                            "no distortion terms)"]
    pinhole = read_idr_cameras(FANGZHOU / "cameras.npz", pixel_centers="half").cameras
    assert not np.any(pinhole.distortion)
    without, with_lens = _mean_reprojection_px(fz_model, pinhole), _mean_reprojection_px(fz_model, idr.cameras)
    assert without > 10.0 and with_lens < 1.0
    assert with_lens == pytest.approx(_mean_reprojection_px(fz_model, fz.cameras), abs=1e-6)


@needs_fangzhou
def test_fangzhou_formats_agree(fz: Capture) -> None:
    idr = load_capture(FANGZHOU, format="idr").cameras
    llff = load_capture(FANGZHOU, format="llff").cameras
    for other in (idr, llff):
        assert other.names == fz.cameras.names
        s, rot, t = _umeyama(other.c2w[:, :3, 3], fz.cameras.c2w[:, :3, 3])
        # The similarity between the world frames is the identity: all three are the COLMAP world.
        assert s == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(rot, np.eye(3), atol=1e-6)
        np.testing.assert_allclose(t, 0.0, atol=1e-4)
        cos = np.einsum("ni,ni->n", (rot @ other.c2w[:, :3, 2].T).T, fz.cameras.c2w[:, :3, 2])
        assert np.all(cos > 1 - 1e-10)
        np.testing.assert_allclose(other.c2w[:, :3, :3], fz.cameras.c2w[:, :3, :3], atol=1e-6)
    # LLFF's intrinsics are the format's assumption, not the lens: one focal, centred principal point.
    np.testing.assert_allclose([llff.fx[0], llff.fy[0], llff.cx[0], llff.cy[0]], [909.72, 909.72, 270, 480],
                               atol=0.01)


@needs_fangzhou
def test_fangzhou_normalisation(fz: Capture) -> None:
    norm = fz.normalization
    assert norm.method == "idr_scale_mat"
    np.testing.assert_allclose(norm.center, [0.897, -1.396, 21.677], atol=1e-3)
    assert norm.radius == pytest.approx(8.736, abs=1e-3)
    cam_d = np.linalg.norm(norm.cameras_to_model(fz.cameras).c2w[:, :3, 3], axis=1)
    assert cam_d.min() > 2.35 and cam_d.max() < 2.74
    assert fz.points3d is not None
    assert np.quantile(np.linalg.norm(norm.to_model(fz.points3d), axis=1), 0.95) == pytest.approx(1.15, abs=0.01)

    # The COLMAP-points rule alone lands on (almost) the same frame.
    pts = normalization_from_points(fz.cameras, fz.points3d)
    assert np.linalg.norm(pts.center - norm.center) < 0.01 * norm.radius
    assert pts.radius == pytest.approx(norm.radius, rel=0.03)
    d_pts = np.linalg.norm(pts.cameras_to_model(fz.cameras).c2w[:, :3, 3], axis=1)
    assert d_pts.min() > 2.3 and d_pts.max() < 2.8
    assert 1.1 < np.quantile(np.linalg.norm(pts.to_model(fz.points3d), axis=1), 0.95) < 1.2

    # The cameras-only rule (what LLFF alone would give): same centre, a larger sphere, capped so that the
    # nearest camera is 2 model units away (the field-filling sphere would be 14.1, cameras at 1.47-1.70).
    cams = normalization_from_cameras(fz.cameras)
    assert np.linalg.norm(cams.center - norm.center) < 1e-3 * norm.radius
    d_cams = np.linalg.norm(cams.cameras_to_model(fz.cameras).c2w[:, :3, 3], axis=1)
    assert d_cams.min() == pytest.approx(2.0)
    assert norm.radius < cams.radius < 1.25 * norm.radius

    # The region's centre is on the person: it projects inside the matte in (nearly) every view.
    hits = 0
    for i in range(0, 100, 10):
        uv, _ = project_points(fz.cameras, i, norm.center[None])
        matte = np.asarray(Image.open(fz.matte_paths[i]))  # type: ignore[index]
        hits += matte[int(uv[0, 1]), int(uv[0, 0])] > 127
    assert hits == 10


@needs_fangzhou
def test_fangzhou_images_and_mattes(fz: Capture) -> None:
    out = load_images(fz, [0, 57], scale=0.5)
    assert out.shape == (2, 480, 270, 4) and out.dtype == np.float32
    matte = np.asarray(Image.open(FANGZHOU / "matte" / "000058.png"), dtype=np.float64) / 255
    np.testing.assert_allclose(out[1, ..., 3], matte.reshape(480, 2, 270, 2).mean((1, 3)), atol=1e-6)
    photo = np.asarray(Image.open(FANGZHOU / "images" / "000058.png"), dtype=np.float64) / 255
    np.testing.assert_allclose(out[1, ..., :3], photo.reshape(480, 2, 270, 2, 3).mean((1, 3)), atol=1e-6)
    assert out[..., 3].min() == 0.0 and out[..., 3].max() == 1.0
    cams = fz.cameras.scaled(0.5)
    assert (cams.width[0], cams.height[0]) == (270, 480)


@pytest.fixture(scope="module")
def lego() -> Capture:
    return load_capture(LEGO)


@needs_lego
def test_lego_train_and_test(lego: Capture) -> None:
    test = load_capture(LEGO, split="test")
    assert len(lego) == 50 and len(test) == 20
    assert load_capture(LEGO, split="train").image_paths == lego.image_paths
    for cap in (lego, test):
        cams = cap.cameras
        np.testing.assert_allclose(cams.fx, 555.555, atol=1e-3)
        np.testing.assert_allclose(cams.fy, 555.555, atol=1e-3)
        np.testing.assert_allclose([cams.cx[0], cams.cy[0]], [200.0, 200.0])
        assert set(cams.width.tolist()) == {400} and set(cams.height.tolist()) == {400}
        assert cap.has_alpha and cap.matte_paths is None and cap.has_matte
        np.testing.assert_allclose(np.linalg.norm(cams.c2w[:, :3, 3], axis=1), 4.031, atol=1e-3)
    assert lego.image_paths[1] == LEGO / "train" / "r_2.png" and test.image_paths[1] == LEGO / "test" / "r_10.png"
    with pytest.raises(CaptureError, match=r"transforms_val\.json: not found"):
        load_capture(LEGO, split="val")
    with pytest.raises(CaptureError, match=r"val/r_0: image file not found"):
        load_capture(LEGO / "transforms_val_full.json")


@needs_lego
def test_lego_normalisation_contains_the_object(lego: Capture) -> None:
    norm = lego.normalization
    assert norm.method == "cameras"
    np.testing.assert_allclose(norm.center, 0.0, atol=1e-6)
    assert norm.radius == pytest.approx(4.031 * np.sin(np.arctan(200 / 555.555)) * 1.2, rel=1e-3)  # 1.64
    # Carve the visual hull from the alpha mattes: every voxel that falls inside the object in all views.
    scale = 0.25
    alphas = load_images(lego, range(len(lego)), scale=scale)[..., 3]
    cams = lego.cameras.scaled(scale)
    g = np.linspace(-2.0, 2.0, 40)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    keep = np.ones(len(grid), bool)
    for i in range(len(lego)):
        uv, depth = project_points(cams, i, grid)
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (col >= 0) & (col < 100) & (row >= 0) & (row < 100) & (depth > 0)
        a = np.zeros(len(grid))
        a[inside] = alphas[i, row[inside], col[inside]]
        keep &= a > 0.5
    r = np.linalg.norm(norm.to_model(grid[keep]), axis=1)
    assert keep.sum() > 1000  # the hull is the object, not empty
    assert 0.6 < r.max() < 1.0  # the whole object is inside the unit sphere (measured: 0.80)


@needs_lego
def test_lego_images(lego: Capture) -> None:
    out = load_images(lego, [0, 3])
    assert out.shape == (2, 400, 400, 4)
    raw = np.asarray(Image.open(LEGO / "train" / "r_6.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(out[1], raw, atol=1e-7)
    assert out[0, 0, 0, 3] == 0.0 and out[0, ..., 3].max() == 1.0
    half = load_images(lego, [0], scale=0.5)
    assert half.shape == (1, 200, 200, 4)
    # Premultiplied averaging: the mean of alpha * rgb is preserved by the 2x reduction.
    np.testing.assert_allclose((half[0, ..., :3] * half[0, ..., 3:]).mean((0, 1)),
                               (out[0, ..., :3] * out[0, ..., 3:]).mean((0, 1)), atol=1e-5)
