"""Capture readers: multi-view images + cameras from COLMAP, transforms.json, IDR cameras.npz or LLFF.

One package for both sides: the backend reads captures with it, and the Blender add-on ships a copy in its
zip (as it does ``protocol/``) and imports cameras with it, so the two agree on every camera, file and rule.
It imports only the standard library and numpy: image sizes and alpha come from the files' headers, pixels
are decoded by the backend (``backend/nerf/capture_images.py``) and rays made there (``backend/nerf/rays.py``).

Everything downstream sees one camera model (:class:`Cameras`, OpenCV axes, pixel centres at +0.5) in the
capture's own world, plus a :class:`Normalization` to the model's unit-sphere region of interest.

Example::

    cap = load_capture("data/fangzhou_nature")          # COLMAP sparse/0 preferred
    train, held = cap.split(holdout_every=8)
    cams = cap.normalization.cameras_to_model(cap.cameras.scaled(0.5))
    for line in cap.warnings:                            # images skipped, mattes paired by order
        print("warning:", line)
"""

from .cameras import OPENGL_TO_OPENCV, Cameras, distort, distortion_terms, project_points
from .capture import FORMATS, Capture, load_capture
from .errors import CaptureError
from .image_headers import image_header
from .images import IMAGE_EXTENSIONS
from .normalize import Normalization

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "OPENGL_TO_OPENCV",
    "Cameras",
    "Capture",
    "CaptureError",
    "Normalization",
    "distort",
    "distortion_terms",
    "image_header",
    "load_capture",
    "project_points",
]
