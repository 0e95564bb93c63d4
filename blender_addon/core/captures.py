"""A capture's cameras, ready for Blender: the shared readers' output converted, nothing read twice.

Capture folders are read by the repository's ``captures`` package, which the add-on's zip carries beside it
(``<zip>/captures/``, as it carries ``protocol/``); the backend reads captures with the same package, so
Blender shows exactly the cameras the backend trains on: same format choice, same principal point, same
images. This module only converts what Blender needs:

* OpenCV-axes c2w to Blender camera axes (:attr:`CaptureCamera.c2w_blender`);
* the pinhole to :class:`~.intrinsics.Intrinsics`, and unique camera names;
* one pixel aspect for all cameras (:func:`blender_cameras`): Blender has one per scene, so views that need
  different ones (``fx/fy`` differs between them) cannot all be shown exactly. Within
  :data:`PIXEL_ASPECT_TOLERANCE_PX` they share one; beyond it the import is refused, naming the views.

No bpy here (``capture_bpy.py`` creates the objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..captures import FORMATS, CaptureError, load_capture
from .capture_frame import capture_sensor_fit
from .intrinsics import BlenderCamera, Intrinsics, blender_from_intrinsics
from .placement import SubjectFrame, subject_frame
from .poses import OPENGL_TO_OPENCV

CAPTURE_FORMATS = FORMATS
__all__ = ["CAPTURE_FORMATS", "Capture", "CaptureCamera", "CaptureError", "blender_cameras", "capture_subject",
           "read_capture"]

# Largest error, in pixels at the image border, that sharing one pixel aspect may cause before the import is
# refused; half a pixel is below what the poses of a real capture are good for (COLMAP's reprojection error).
PIXEL_ASPECT_TOLERANCE_PX = 0.5
# Below this the difference is rounding and is not worth a warning.
PIXEL_ASPECT_SILENT_PX = 0.01


@dataclass
class CaptureCamera:
    """One camera of a capture.

    Attributes:
        name: image file stem, unique within the capture (``.001`` suffixes added as Blender would).
        c2w: ``(4, 4)`` camera-to-world, OpenCV axes, capture world.
        intrinsics: pinhole intrinsics at the image's size.
        image: the image file.
        distortion: ``(k1, k2, p1, p2)``.
    """

    name: str
    c2w: np.ndarray
    intrinsics: Intrinsics
    image: Path
    distortion: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def c2w_blender(self) -> np.ndarray:
        """``(4, 4)`` c2w with Blender camera axes (looks down −Z), capture world."""
        return self.c2w @ OPENGL_TO_OPENCV


@dataclass
class Capture:
    """The cameras of one capture, with where they came from.

    Attributes:
        format: one of :data:`CAPTURE_FORMATS`.
        path: the camera file read (transforms.json, cameras.npz, ...) or the COLMAP model folder.
        root: the capture folder (what is sent to the backend).
        cameras: one per image.
        warnings: what the user must be told (images skipped, mattes paired by order).
        notes: the reader's decisions (format chosen, pixel-centre convention, ...).
        centre: ``(3,)`` the subject's centre in capture world, where the optical axes converge: the shared
            reader's region-of-interest centre, the one the backend's model is centred on (None: unknown).
    """

    format: str
    path: Path
    root: Path
    cameras: list[CaptureCamera] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    centre: np.ndarray | None = None

    @property
    def has_distortion(self) -> bool:
        return any(any(abs(k) > 0 for k in c.distortion) for c in self.cameras)


def read_capture(path: str | Path, fmt: str | None = None) -> Capture:
    """Read a capture folder (or one camera file) with the shared readers; ``fmt`` forces a format.

    Raises:
        CaptureError: with a readable message naming the file at fault.
    """
    shared = load_capture(path, format=fmt)
    cams = shared.cameras
    cameras = [
        CaptureCamera(
            name=cams.names[i], c2w=cams.c2w[i].copy(),
            intrinsics=Intrinsics(float(cams.fx[i]), float(cams.fy[i]), float(cams.cx[i]), float(cams.cy[i]),
                                  int(cams.width[i]), int(cams.height[i])),
            image=shared.image_paths[i],
            distortion=tuple(float(k) for k in cams.distortion[i]),  # type: ignore[arg-type]
        )
        for i in range(len(cams))
    ]
    _unique_names(cameras)
    source = shared.source if shared.source is not None else shared.root
    return Capture(shared.source_format, source, shared.root.resolve(), cameras, list(shared.warnings),
                   list(shared.notes), centre=shared.normalization.center.copy())


def capture_subject(capture: Capture) -> SubjectFrame:
    """The capture's subject (centre, up, front, size) in capture world, from its cameras
    (:func:`.placement.subject_frame`); the centre is :attr:`Capture.centre`, else the cameras' mean position."""
    c2w = np.stack([c.c2w for c in capture.cameras])
    centre = capture.centre if capture.centre is not None else c2w[:, :3, 3].mean(axis=0)
    k = [c.intrinsics for c in capture.cameras]
    return subject_frame(c2w, centre, np.array([i.fx for i in k]), np.array([i.fy for i in k]),
                         np.array([i.width for i in k]), np.array([i.height for i in k]))


def _unique_names(cameras: list[CaptureCamera]) -> None:
    """Give repeated names (``a/x.png`` and ``b/x.png`` share the stem ``x``) Blender-style suffixes."""
    seen: dict[str, int] = {}
    for cam in cameras:
        n = seen.get(cam.name, 0)
        seen[cam.name] = n + 1
        if n:
            cam.name = f"{cam.name}.{n:03d}"


def blender_cameras(capture: Capture, clip_start: float = 0.01, clip_end: float = 1000.0
                    ) -> tuple[list[BlenderCamera], str | None]:
    """Blender settings for every camera, all with the one pixel aspect a scene can have.

    ``fx`` and the principal point stay exact for every camera; ``fy`` follows the shared pixel aspect
    (``fy = fx / (pixel_aspect_y / pixel_aspect_x)``), chosen to make the worst camera's error smallest
    (:func:`_shared_aspect`); when every view needs the same aspect, it is that one exactly. Each camera's sensor
    fits its photo's long side (:func:`.capture_frame.capture_sensor_fit`), so a portrait camera keeps its view in
    a landscape scene.

    Returns:
        One :class:`BlenderCamera` per camera (the scene's resolution and pixel aspect are in each), and a
        warning when sharing the aspect moves some camera's image border by more than
        :data:`PIXEL_ASPECT_SILENT_PX` (else ``None``).

    Raises:
        CaptureError: sharing one aspect would put some camera more than :data:`PIXEL_ASPECT_TOLERANCE_PX` off.
        ValueError: a camera outside Blender's limits (lens, shift), from :func:`blender_from_intrinsics`.
    """
    ycors = np.array([c.intrinsics.fx / c.intrinsics.fy for c in capture.cameras])
    # Rows from the principal point to the farther image border: where a wrong fy moves the image most.
    borders = np.array([max(c.intrinsics.cy, c.intrinsics.height - c.intrinsics.cy) for c in capture.cameras])
    shared = _shared_aspect(ycors, borders)
    errors = np.abs(ycors / shared - 1.0) * borders
    worst = int(np.argmax(errors))
    lo, hi = int(np.argmin(ycors)), int(np.argmax(ycors))
    spread = (f"the views need different pixel aspects (fx/fy from {ycors[lo]:.5g} for {capture.cameras[lo].name} "
              f"to {ycors[hi]:.5g} for {capture.cameras[hi].name}), and a Blender scene has one")
    if errors[worst] > PIXEL_ASPECT_TOLERANCE_PX:
        raise CaptureError(
            f"{capture.path}: {spread}: camera {capture.cameras[worst].name} would be {errors[worst]:.1f} px off at "
            f"its image border. Import a capture whose views share one camera model (e.g. COLMAP with "
            f"--ImageReader.single_camera 1); the backend itself uses every view's own intrinsics")
    warning = None
    if errors[worst] > PIXEL_ASPECT_SILENT_PX:
        warning = (f"{spread}: all use fx/fy = {shared:.5g}, which moves the image border of "
                   f"{capture.cameras[worst].name} by {errors[worst]:.2f} px (the backend uses each view's own)")
    out = []
    for cam in capture.cameras:
        k = cam.intrinsics
        common = Intrinsics(k.fx, k.fx / shared, k.cx, k.cy, k.width, k.height)
        fit, sensor_w, sensor_h = capture_sensor_fit(k.width, k.height)
        out.append(blender_from_intrinsics(common, sensor_fit=fit, sensor_width=sensor_w, sensor_height=sensor_h,
                                           clip_start=clip_start, clip_end=clip_end))
    return out, warning


def _shared_aspect(ycors: np.ndarray, borders: np.ndarray) -> float:
    """The ``fx/fy`` that minimises the largest border error ``borders * |ycors / c - 1|`` over the cameras.

    The cameras above ``c`` err less as ``c`` grows, those below more, so the optimum is where the two worst
    errors meet: found by bisection between the smallest and largest ``ycors`` (exactly that value when all
    are equal).

    Args:
        ycors: ``(n,)`` each camera's ``fx/fy``.
        borders: ``(n,)`` each camera's distance in rows from the principal point to its farther border.
    """
    lo, hi = float(ycors.min()), float(ycors.max())
    if lo == hi:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.max(borders * (ycors / mid - 1.0)) > np.max(borders * (1.0 - ycors / mid)):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
