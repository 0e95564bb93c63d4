"""Lens distortion for a pinhole ``cameras.npz`` from the COLMAP model beside it.

``cameras.npz`` (IDR / VolSDF / NeuS) stores ``K [R | t]`` only: no lens distortion. Tools such as NeRF-Art's
``colmap2volsdf.py`` write it from a COLMAP model whose camera *does* model the lens (fangzhou_nature: OPENCV,
k1 0.1667 k2 -0.1297 p1 0.0609 p2 0.0263) and leave that model in ``sparse/0``. Reading such a capture from
the ``cameras.npz`` alone fits a pinhole to distorted photos: on fangzhou the COLMAP points then land about
10 px (median) from where the photos show them, against under a pixel with the distortion
(``tests/test_captures_real.py``).

So when a capture is read from ``cameras.npz`` and a COLMAP model in the same folder describes the same views,
its distortion is carried over (:func:`lens_from_colmap`). "The same views" means all of:

* **names**: every ``cameras.npz`` view (an image of ``images/``) is registered in the model under its name
  (the model may register more: frames deleted after SfM, :mod:`.capture`'s fallback case);
* **image size** equal to the model camera's (distortion is fitted in the model's pixels);
* **intrinsics**: fx, fy, cx, cy within :data:`INTRINSICS_TOLERANCE_PX`;
* **poses**: one similarity maps the model's cameras onto the file's (centres within
  :data:`CENTRE_TOLERANCE` of the cameras' spread, orientations within :data:`ROTATION_TOLERANCE_RAD`). The
  files of one capture share a world (fangzhou's ``world_mat`` is in the COLMAP world, ``scale_mat`` apart),
  but a writer may also have pre-normalised the poses; a similarity accepts both and nothing else.

When a model is there but cannot be used (it is unreadable, describes other views, or uses a lens model
our camera cannot represent) and it does model a lens, the capture gets a warning in plain words, because
the frames will then be slightly off near the edges; a model without distortion costs nothing and only gets
a note. numpy only, like the rest of the package (the Blender add-on imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cameras import Cameras
from .colmap import SUPPORTED_MODELS, ColmapCamera, ColmapModel, colmap_intrinsics
from .errors import CaptureError

# A cameras.npz derived from the model copies its K (to float precision) or shifts cx, cy by COLMAP's
# half-pixel convention (0.5, which :mod:`.idr` undoes); a separate calibration of the lens lands pixels away.
INTRINSICS_TOLERANCE_PX = 1.0
# Both files hold the same numbers (float64 or ~9 printed digits); a re-run of SfM moves cameras by percents.
CENTRE_TOLERANCE = 1e-3
ROTATION_TOLERANCE_RAD = 1e-3  # 0.06 degrees
# COLMAP models whose parameters start with one focal length (f, cx, cy, ...); the others start fx, fy, cx, cy.
_SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
_CONSEQUENCE = "frames will be slightly off near the edges unless the photos were undistorted already"


@dataclass
class LensFromColmap:
    """What the COLMAP model beside a cameras.npz contributes.

    Attributes:
        distortion: ``(N, 4)`` ``k1 k2 p1 p2`` for the file's cameras, or ``None`` when none is carried over.
        warning: what the user must be told (distortion taken from the model, or a model's lens left unused).
        note: the decision, when it needs no warning (the model agrees but models no lens, ...).
    """

    distortion: np.ndarray | None = None
    warning: str | None = None
    note: str | None = None


def lens_from_colmap(cameras: Cameras, file_name: str, model: ColmapModel | CaptureError, model_label: str
                     ) -> LensFromColmap:
    """The distortion of the COLMAP model beside a cameras.npz, when the model describes the same views.

    Args:
        cameras: ``N`` cameras as read from the cameras.npz (pinhole; its names are the image stems).
        file_name: the cameras.npz's name, for messages.
        model: the model read from the folder, or the error reading it raised.
        model_label: how to name the model in messages (``sparse/0``).

    Returns:
        The distortion to use and the line to report (module docstring for the rules).
    """
    if isinstance(model, CaptureError):
        return LensFromColmap(warning=f"lens distortion in {model_label} (if any) was not applied because the COLMAP "
                                      f"model cannot be read ({model}); {_CONSEQUENCE}")
    reason, matched = _match(cameras, file_name, model)
    cams = matched if matched is not None else list(model.cameras.values())
    models_lens = any(np.any(_pinhole_part(c)[1] != 0) for c in cams)
    if reason is not None or matched is None:
        if not models_lens:
            return LensFromColmap(note=f"{model_label} describes other views than {file_name} ({reason}); it has "
                                       "no lens distortion, so nothing is lost")
        return LensFromColmap(warning=f"lens distortion in {model_label} was not applied because the COLMAP model "
                                      f"does not describe the same views as {file_name} ({reason}); {_CONSEQUENCE}")
    unusable = sorted({c.model for c in matched if c.model not in SUPPORTED_MODELS})
    if unusable:
        return LensFromColmap(warning=f"lens distortion in {model_label} was not applied because its camera model "
                                      f"{', '.join(unusable)} cannot be represented here (supported: "
                                      f"{', '.join(SUPPORTED_MODELS)}); {_CONSEQUENCE}")
    dist = np.stack([colmap_intrinsics(c)[4] for c in matched])
    if not np.any(dist != 0):
        return LensFromColmap(note=f"{model_label} describes the same {len(cameras)} views as {file_name} and "
                                   "models no lens distortion")
    values = (f"k1 k2 p1 p2 = {', '.join(f'{v:.4g}' for v in dist[0])}" if np.all(dist == dist[0])
              else "k1 k2 p1 p2, per view")
    return LensFromColmap(distortion=dist, warning=(
        f"lens distortion ({values}) taken from the COLMAP model in {model_label}, which describes the same "
        f"{len(cameras)} views as {file_name} (a cameras.npz has no distortion terms)"))


def _match(cameras: Cameras, file_name: str, model: ColmapModel) -> tuple[str | None, list[ColmapCamera] | None]:
    """Why the model does not describe the file's views (``None``: it does), and each view's model camera."""
    by_name = {str(Path(im.name).with_suffix("")): im for im in model.images}
    missing = [n for n in cameras.names if n not in by_name]
    if missing:
        return (f"{len(missing)} of its {len(cameras)} images are not registered in the model, e.g. "
                f"{missing[0]}"), None
    images = [by_name[n] for n in cameras.names]
    matched = [model.cameras[im.camera_id] for im in images]
    for i, cam in enumerate(matched):
        if (cam.width, cam.height) != (int(cameras.width[i]), int(cameras.height[i])):
            return (f"the model's camera is {cam.width}x{cam.height} pixels, image {cameras.names[i]} is "
                    f"{int(cameras.width[i])}x{int(cameras.height[i])}"), matched
        k = _pinhole_part(cam)[0]
        ours = np.array([cameras.fx[i], cameras.fy[i], cameras.cx[i], cameras.cy[i]])
        worst = int(np.argmax(np.abs(ours - k)))
        if abs(ours[worst] - k[worst]) > INTRINSICS_TOLERANCE_PX:
            what = ("fx", "fy", "cx", "cy")[worst]
            return (f"{what} {k[worst]:.2f} in the model, {ours[worst]:.2f} in {file_name} for "
                    f"{cameras.names[i]}"), matched
    w2c = np.stack([im.world_to_camera() for im in images])
    centre_err, angle = _pose_mismatch(cameras.c2w, np.linalg.inv(w2c))
    # Orientations first: the alignment's rotation comes from them, so one turned camera also shifts centres.
    if angle > ROTATION_TOLERANCE_RAD:
        return (f"its camera orientations differ, by up to {np.degrees(angle):.2g} degrees after aligning the two "
                "worlds"), matched
    if centre_err > CENTRE_TOLERANCE:
        return (f"its camera positions differ, by up to {centre_err:.1%} of the cameras' spread after aligning the "
                "two worlds"), matched
    return None, matched


def _pinhole_part(camera: ColmapCamera) -> tuple[np.ndarray, np.ndarray]:
    """``(4,)`` fx, fy, cx, cy and the remaining (lens) parameters of any COLMAP camera model."""
    p = np.asarray(camera.params, dtype=np.float64)
    if camera.model in _SINGLE_FOCAL:
        return np.array([p[0], p[0], p[1], p[2]]), p[3:]
    return p[:4].copy(), p[4:]


def _pose_mismatch(c2w_a: np.ndarray, c2w_b: np.ndarray) -> tuple[float, float]:
    """How far cameras ``b`` are from ``a`` after the similarity that best maps ``b``'s world onto ``a``'s.

    The rotation comes from the camera orientations (the polar factor of ``sum R_a R_b^T``), which stays
    defined however the centres lie; scale and shift then fit the centres by least squares.

    Args:
        c2w_a, c2w_b: ``(N, 4, 4)`` camera-to-world matrices of the same N views.

    Returns:
        The largest centre error relative to the spread of ``a``'s centres, and the largest orientation
        difference in radians.
    """
    ra, rb = c2w_a[:, :3, :3], c2w_b[:, :3, :3]
    u, _, vt = np.linalg.svd(np.einsum("nij,nkj->ik", ra, rb))
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    ca, cb = c2w_a[:, :3, 3], c2w_b[:, :3, 3]
    a0, b0 = ca - ca.mean(0), (cb - cb.mean(0)) @ rot.T
    denom = float((b0 * b0).sum())
    scale = float((a0 * b0).sum()) / denom if denom > 0 else 1.0
    spread = float(np.max(np.ptp(ca, axis=0))) or 1.0
    centre_err = float(np.max(np.linalg.norm(a0 - scale * b0, axis=1))) / spread if scale > 0 else np.inf
    cos = (np.einsum("njk,njk->n", ra, np.einsum("ij,njk->nik", rot, rb)) - 1.0) / 2.0  # trace(Ra^T R Rb)
    return centre_err, float(np.max(np.arccos(np.clip(cos, -1.0, 1.0))))
