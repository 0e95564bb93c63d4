"""Blender camera settings ↔ pinhole intrinsics (fx, fy, cx, cy, width, height), exactly.

The forward map is Blender's own viewplane (``BKE_camera_params_compute_viewplane`` in
``source/blender/blenkernel/intern/camera.cc``) for a perspective camera without zoom or border crop::

    s     = resolution_percentage / 100 ;  W = floor(resolution_x · s) ;  H = floor(resolution_y · s)
    ycor  = pixel_aspect_y / pixel_aspect_x
    sensor = sensor_height if sensor_fit == 'VERTICAL' else sensor_width      (AUTO uses sensor_width)
    fit    = HOR if sensor_fit == 'HORIZONTAL' or (sensor_fit == 'AUTO' and pax·W >= pay·H) else VERT
    viewfac = W if fit == HOR else ycor · H
    fx = lens · viewfac / sensor ;  fy = fx / ycor
    cx = W/2 − shift_x · viewfac ;  cy = H/2 + shift_y · viewfac / ycor

Pixel coordinates are continuous with the origin at the image's top-left *corner* and y pointing down, so the
centre of pixel (column i, row j) is (i + 0.5, j + 0.5): the COLMAP / nerfstudio convention, identical to
Blender's. ``cx = W/2`` is the exact image centre.

No bpy here: :mod:`..cameras_bpy` copies values out of ``bpy.types.Camera`` into :class:`BlenderCamera`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")

# Blender's RNA limits for the fields we write back (rna_camera.cc / rna_scene.cc).
LENS_MIN_MM = 1.0
SENSOR_MIN_MM = 1.0
SHIFT_LIMIT = 10.0
PIXEL_ASPECT_MIN, PIXEL_ASPECT_MAX = 1.0, 200.0
RESOLUTION_MAX = 65536


@dataclass(frozen=True)
class BlenderCamera:
    """The Blender settings that decide a perspective camera's projection (a plain copy, no bpy).

    Attributes:
        lens: focal length in millimetres (``Camera.lens``).
        sensor_width, sensor_height: sensor size in millimetres.
        sensor_fit: ``'AUTO'``, ``'HORIZONTAL'`` or ``'VERTICAL'``.
        shift_x, shift_y: lens shift in units of the fitted sensor dimension.
        resolution_x, resolution_y: ``scene.render.resolution_x/y`` in pixels.
        resolution_percentage: ``scene.render.resolution_percentage`` (1..32767).
        pixel_aspect_x, pixel_aspect_y: ``scene.render.pixel_aspect_x/y`` (1..200).
        clip_start, clip_end: clipping distances in scene units.
        type: ``Camera.type``; only ``'PERSP'`` maps to a pinhole.
    """

    lens: float = 50.0
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution_x: int = 1920
    resolution_y: int = 1080
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0
    clip_start: float = 0.1
    clip_end: float = 1000.0
    type: str = "PERSP"

    def validate(self) -> None:
        """Raise ``ValueError`` with a readable sentence if these settings have no pinhole projection."""
        if self.type != "PERSP":
            raise ValueError(f"only perspective cameras can be exported; this camera's type is {self.type!r} "
                             "(set Camera ▸ Lens ▸ Type to Perspective)")
        if self.sensor_fit not in SENSOR_FITS:
            raise ValueError(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {self.sensor_fit!r}")
        for name in ("lens", "sensor_width", "sensor_height", "pixel_aspect_x", "pixel_aspect_y"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"camera {name} must be a positive number, got {value!r}")
        for name in ("shift_x", "shift_y"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"camera {name} must be finite, got {getattr(self, name)!r}")
        if self.resolution_x < 1 or self.resolution_y < 1 or self.resolution_percentage < 1:
            raise ValueError(f"render resolution must be positive, got {self.resolution_x}x{self.resolution_y} "
                             f"at {self.resolution_percentage}%")
        width, height = render_size(self.resolution_x, self.resolution_y, self.resolution_percentage)
        if width < 1 or height < 1:
            raise ValueError(f"render size at {self.resolution_percentage}% is {width}x{height} pixels; "
                             "raise the resolution percentage")


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera in pixels (COLMAP / nerfstudio convention: pixel centres at +0.5).

    Attributes:
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels from the image's top-left corner.
        width, height: image size in pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def validate(self) -> None:
        """Raise ``ValueError`` if any value is unusable."""
        if not (math.isfinite(self.fx) and math.isfinite(self.fy) and self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx!r} fy={self.fy!r}")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"principal point must be finite, got cx={self.cx!r} cy={self.cy!r}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def matrix(self) -> list[list[float]]:
        """The 3×3 K matrix as nested lists."""
        return [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]]

    def fov(self) -> tuple[float, float]:
        """Horizontal and vertical field of view in radians, for a centred principal point."""
        return 2.0 * math.atan(self.width / (2.0 * self.fx)), 2.0 * math.atan(self.height / (2.0 * self.fy))

    def resized(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resampled to ``width × height`` (continuous-coordinate scaling)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    def to_opencv_integer_centres(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx', cy') for consumers that cast rays at integer pixel coordinates (IDR, NeRF-Art).

        Their pixel (i, j) *centre* is at (i, j), so the principal point moves by half a pixel.
        """
        return self.fx, self.fy, self.cx - 0.5, self.cy - 0.5


def render_size(resolution_x: int, resolution_y: int, resolution_percentage: int) -> tuple[int, int]:
    """Blender's rendered image size: ``(resolution · percentage) / 100`` in integer arithmetic.

    This is ``BKE_render_resolution`` (``(xsch * size) / 100`` with C integer division), so 1081 px at 50 %
    renders 540 px wide.
    """
    return (int(resolution_x) * int(resolution_percentage)) // 100, \
        (int(resolution_y) * int(resolution_percentage)) // 100


def effective_sensor_fit(sensor_fit: str, width: int, height: int, pixel_aspect_x: float = 1.0,
                         pixel_aspect_y: float = 1.0) -> str:
    """``'HORIZONTAL'`` or ``'VERTICAL'``: the axis the sensor spans, resolving AUTO like Blender does."""
    if sensor_fit == "AUTO":
        return "HORIZONTAL" if pixel_aspect_x * width >= pixel_aspect_y * height else "VERTICAL"
    if sensor_fit not in ("HORIZONTAL", "VERTICAL"):
        raise ValueError(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    return sensor_fit


def intrinsics_from_blender(cam: BlenderCamera) -> Intrinsics:
    """Exact pinhole intrinsics of a Blender perspective camera at its render resolution.

    Args:
        cam: the camera and render settings.

    Returns:
        fx, fy, cx, cy in pixels (centres at +0.5) and the rendered width × height (after the percentage).

    Raises:
        ValueError: for a non-perspective camera or settings without a projection (zero sizes, NaN).

    Example:
        >>> k = intrinsics_from_blender(BlenderCamera(lens=50, resolution_x=1080, resolution_y=1920))
        >>> round(k.fx, 1), k.cx, k.cy
        (2666.7, 540.0, 960.0)
    """
    cam.validate()
    width, height = render_size(cam.resolution_x, cam.resolution_y, cam.resolution_percentage)
    pax, pay = float(cam.pixel_aspect_x), float(cam.pixel_aspect_y)
    ycor = pay / pax
    sensor = cam.sensor_height if cam.sensor_fit == "VERTICAL" else cam.sensor_width
    fit = effective_sensor_fit(cam.sensor_fit, width, height, pax, pay)
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    fx = cam.lens * viewfac / sensor
    fy = fx / ycor
    cx = width / 2.0 - cam.shift_x * viewfac
    cy = height / 2.0 + cam.shift_y * viewfac / ycor
    return Intrinsics(fx, fy, cx, cy, width, height)


def blender_from_intrinsics(intr: Intrinsics, sensor_fit: str = "AUTO", sensor_width: float = 36.0,
                            sensor_height: float = 24.0, clip_start: float = 0.1,
                            clip_end: float = 1000.0) -> BlenderCamera:
    """Blender camera and render settings that reproduce ``intr`` exactly (the inverse of
    :func:`intrinsics_from_blender`).

    The render resolution becomes ``width × height`` at 100 %. Non-square pixels (``fx != fy``) become a pixel
    aspect ratio with the smaller side at 1, as Blender requires both to be at least 1. The sensor size is
    kept (36 mm across the fitted axis by default, like Blender's default camera) and the lens and shifts are
    solved for.

    Args:
        intr: the pinhole camera.
        sensor_fit: which fit to write; every choice is exact.
        sensor_width, sensor_height: sensor size in millimetres to keep.
        clip_start, clip_end: clipping distances to write.

    Raises:
        ValueError: if the result falls outside Blender's limits (lens under 1 mm, shift beyond ±10, pixel
            aspect beyond 200) with a sentence naming the value.
    """
    intr.validate()
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit must be one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    width, height = int(intr.width), int(intr.height)
    ycor = intr.fx / intr.fy  # = pay / pax
    if ycor >= 1.0:
        pax, pay = 1.0, ycor
    else:
        pax, pay = 1.0 / ycor, 1.0
    if pay > PIXEL_ASPECT_MAX or pax > PIXEL_ASPECT_MAX:
        raise ValueError(f"fx/fy = {ycor:.4g} needs a pixel aspect beyond Blender's limit of {PIXEL_ASPECT_MAX:g}")
    fit = effective_sensor_fit(sensor_fit, width, height, pax, pay)
    sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    lens = intr.fx * sensor / viewfac
    shift_x = (width / 2.0 - intr.cx) / viewfac
    shift_y = (intr.cy - height / 2.0) * ycor / viewfac
    if lens < LENS_MIN_MM:
        raise ValueError(f"a {sensor:g} mm sensor needs a {lens:.4g} mm lens, below Blender's minimum of "
                         f"{LENS_MIN_MM:g} mm; use a larger sensor")
    if abs(shift_x) > SHIFT_LIMIT or abs(shift_y) > SHIFT_LIMIT:
        raise ValueError(f"principal point ({intr.cx:.1f}, {intr.cy:.1f}) needs a lens shift of "
                         f"({shift_x:.3g}, {shift_y:.3g}), beyond Blender's ±{SHIFT_LIMIT:g}")
    if width > RESOLUTION_MAX or height > RESOLUTION_MAX:
        raise ValueError(f"image size {width}x{height} exceeds Blender's {RESOLUTION_MAX} pixel limit")
    return BlenderCamera(
        lens=lens, sensor_width=sensor_width, sensor_height=sensor_height, sensor_fit=sensor_fit,
        shift_x=shift_x, shift_y=shift_y, resolution_x=width, resolution_y=height, resolution_percentage=100,
        pixel_aspect_x=pax, pixel_aspect_y=pay, clip_start=clip_start, clip_end=clip_end, type="PERSP",
    )


def with_resolution(cam: BlenderCamera, resolution_x: int, resolution_y: int,
                    resolution_percentage: int = 100) -> BlenderCamera:
    """``cam`` rendered at another resolution (lens and shift unchanged)."""
    return replace(cam, resolution_x=int(resolution_x), resolution_y=int(resolution_y),
                   resolution_percentage=int(resolution_percentage))


def projection_matrix(intr: Intrinsics, near: float, far: float) -> list[list[float]]:
    """The OpenGL-style 4×4 projection Blender builds for these intrinsics (camera looks down −Z).

    It is what ``Object.calc_matrix_camera`` returns for the matching camera, so the bpy tests can compare
    the two element by element. NDC x runs left to right and NDC y bottom to top.
    """
    w, h = float(intr.width), float(intr.height)
    return [
        [2.0 * intr.fx / w, 0.0, 1.0 - 2.0 * intr.cx / w, 0.0],
        [0.0, 2.0 * intr.fy / h, 2.0 * intr.cy / h - 1.0, 0.0],
        [0.0, 0.0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
        [0.0, 0.0, -1.0, 0.0],
    ]


def intrinsics_from_projection(matrix: list[list[float]] | tuple, width: int, height: int) -> Intrinsics:
    """Read fx, fy, cx, cy back out of an OpenGL-style projection (the inverse of :func:`projection_matrix`).

    ``fx = P00·W/2``, ``fy = P11·H/2``, ``cx = W/2·(1 − P02)``, ``cy = H/2·(1 + P12)``.
    """
    w, h = float(width), float(height)
    return Intrinsics(
        fx=matrix[0][0] * w / 2.0, fy=matrix[1][1] * h / 2.0,
        cx=w / 2.0 * (1.0 - matrix[0][2]), cy=h / 2.0 * (1.0 + matrix[1][2]),
        width=int(width), height=int(height),
    )

