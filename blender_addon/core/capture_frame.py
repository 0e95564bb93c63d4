"""How a capture's photos frame in a scene whose render shape may differ: never squashed, and said when not exact.

A Blender scene has one render resolution and pixel aspect; an imported capture's cameras frame exactly like
their photos only at the photos' shape. At any other shape:

* the camera keeps the photo's view along the photo's long side: ``VERTICAL`` sensor fit for a portrait photo,
  ``HORIZONTAL`` for a landscape or square one (:func:`capture_sensor_fit`). With ``AUTO`` a portrait camera in
  a landscape scene would spread its sensor over the frame's width, so the frame's width would see what the
  photo's height saw: the subject magnified by the scene's aspect (1.8x at 16:9), head and chin cut off
  (``intrinsics.effective_sensor_fit``);
* the photo shown behind the camera keeps its own shape (:func:`background_frame_method`): ``FIT`` or ``CROP``
  so that its fitted side spans the frame's, never ``STRETCH`` (which squashed a portrait photo into a
  landscape frame);
* the artist is told, with the way out (:func:`frame_mismatch`).

No bpy here.
"""

from __future__ import annotations

import math

# A 36 mm film frame turned with the photo: the imported lens then reads as a full-frame equivalent.
FULL_FRAME_LONG_MM, FULL_FRAME_SHORT_MM = 36.0, 24.0


def orientation(width: float, height: float) -> str:
    """``'portrait'``, ``'landscape'`` or ``'square'`` for an image of this displayed width and height."""
    if math.isclose(width, height, rel_tol=1e-6):
        return "square"
    return "portrait" if height > width else "landscape"


def capture_sensor_fit(width: int, height: int) -> tuple[str, float, float]:
    """Sensor fit, sensor width and sensor height (mm) for a camera that shows a ``width × height`` photo.

    The fitted axis is the photo's long side, so the view along it stays the photo's whatever the scene's shape.
    """
    if height > width:
        return "VERTICAL", FULL_FRAME_SHORT_MM, FULL_FRAME_LONG_MM
    return "HORIZONTAL", FULL_FRAME_LONG_MM, FULL_FRAME_SHORT_MM


def background_frame_method(sensor_fit: str, photo_aspect: float, frame_aspect: float) -> str:
    """How a camera's background photo must fit its frame to line up with what the camera sees.

    The camera keeps the photo's view along the fitted axis, so the photo's side along that axis must span the
    frame's: ``FIT`` when the photo is then inside the frame, ``CROP`` when it overflows it. At equal aspects
    both are the photo exactly.

    Args:
        sensor_fit: the camera's ``'HORIZONTAL'`` or ``'VERTICAL'`` fit.
        photo_aspect: displayed width / height of the photo.
        frame_aspect: displayed width / height of the scene's render (pixel aspect included).

    Returns:
        ``'FIT'`` or ``'CROP'`` (``CameraBackgroundImage.frame_method``).
    """
    if sensor_fit == "VERTICAL":
        return "FIT" if photo_aspect <= frame_aspect else "CROP"
    return "FIT" if photo_aspect >= frame_aspect else "CROP"


def frame_mismatch(scene_size: tuple[int, int], scene_pixel_aspect: tuple[float, float],
                   photo_size: tuple[int, int], photo_pixel_aspect: tuple[float, float]) -> str | None:
    """Why the scene's render does not frame like the capture's photos, with what to do; None when it does.

    Args:
        scene_size: ``render.resolution_x, resolution_y`` (the percentage does not change the shape).
        scene_pixel_aspect: ``render.pixel_aspect_x, pixel_aspect_y``.
        photo_size: the photos' width and height in pixels.
        photo_pixel_aspect: the pixel aspect the capture's cameras need (x, y).
    """
    (sw, sh), (spx, spy) = scene_size, scene_pixel_aspect
    (pw, ph), (ppx, ppy) = photo_size, photo_pixel_aspect
    problems = []
    # Displayed shapes (pixel aspect included); float32 pixel aspects: equal within 1e-6.
    if not math.isclose(sw * spx * ph * ppy, sh * spy * pw * ppx, rel_tol=1e-6):
        scene_shape, photo_shape = orientation(sw * spx, sh * spy), orientation(pw * ppx, ph * ppy)
        side = "height" if ph * ppy > pw * ppx else "width"
        what = (f"the capture's photos are {photo_shape} ({pw}x{ph}) but the scene renders {scene_shape} ({sw}x{sh})"
                if scene_shape != photo_shape else f"the scene renders {sw}x{sh} but the capture's photos are {pw}x{ph}")
        problems.append(f"{what}: the cameras keep the photos' full {side}; renders through them add or cut the "
                        "rest")
    if not math.isclose(spy / spx, ppy / ppx, rel_tol=1e-6):
        problems.append(f"the scene's pixel aspect is {spx:g}:{spy:g} but the capture's cameras need "
                        f"{ppx:.6g}:{ppy:.6g} (non-square pixels, fx != fy): until Output ▸ Format ▸ Aspect is set "
                        "to it, they do not frame their photos")
    if not problems:
        return None
    aspect = "" if math.isclose(ppx, ppy, rel_tol=1e-6) else f" with pixel aspect {ppx:.6g}:{ppy:.6g}"
    return "; ".join(problems) + f". Match Photo Size sets the scene to {pw}x{ph}{aspect}"
