"""Capture readers: multi-view images + cameras from COLMAP, transforms.json, IDR cameras.npz or LLFF.

Everything downstream sees one camera model (:class:`Cameras`, OpenCV axes, pixel centres at +0.5) in the
capture's own world, plus a :class:`Normalization` to the model's unit-sphere region of interest.

Example::

    cap = load_capture("data/fangzhou_nature")          # COLMAP sparse/0 preferred
    train, held = cap.split(holdout_every=8)
    rgba = load_images(cap, train[:4], scale=0.5)       # (4, 480, 270, 4) float32, straight alpha
    cams = cap.normalization.cameras_to_model(cap.cameras.scaled(0.5))
"""

from .cameras import (
    OPENGL_TO_OPENCV,
    Cameras,
    distort,
    pixel_centers,
    project_points,
    rays_for_image,
    rays_from_pixels,
    undistort,
)
from .capture import FORMATS, Capture, load_capture
from .errors import CaptureError
from .images import load_images
from .normalize import Normalization

__all__ = [
    "FORMATS",
    "OPENGL_TO_OPENCV",
    "Cameras",
    "Capture",
    "CaptureError",
    "Normalization",
    "distort",
    "load_capture",
    "load_images",
    "pixel_centers",
    "project_points",
    "rays_for_image",
    "rays_from_pixels",
    "undistort",
]
