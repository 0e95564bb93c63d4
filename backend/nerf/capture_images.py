"""Pixels of a capture: decoding images and mattes (Pillow), exact area resizing, and :func:`load_images`.

The shared reader package (:mod:`captures`) finds the files and checks their headers without decoding a
pixel; this module is the backend's half that decodes them. EXIF orientation is deliberately *not* applied:
COLMAP and the other pose tools index the stored pixel array, and rotating it would break the intrinsics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from captures import Capture, CaptureError

# Pillow raises these for unreadable, truncated or unsupported files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _mode_has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB") and
                                                            "transparency" in im.info)


def read_rgba(path: Path) -> tuple[np.ndarray, bool]:
    """Decode one image to float32 ``(H, W, 4)`` RGBA in [0, 1] and whether the file carried alpha.

    16-bit PNGs keep their precision (Pillow opens them as ``I;16``/``I``); without alpha the A channel is 1.

    Raises:
        CaptureError: missing or unreadable file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            alpha = _mode_has_alpha(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey photo
                grey = np.asarray(im, dtype=np.float32) / 65535.0
                rgba = np.concatenate([np.repeat(grey[..., None], 3, -1), np.ones_like(grey)[..., None]], -1)
                return rgba, False
            arr = np.asarray(im.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CaptureError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        raise CaptureError(f"{path}: unreadable image ({exc})") from None
    if not alpha:
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=-1)
    return arr, alpha


def read_matte(path: Path) -> np.ndarray:
    """Decode a matte to float32 ``(H, W)`` in [0, 1], white = foreground (8- or 16-bit grey; colour taken as grey).

    Raises:
        CaptureError: missing or unreadable file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.float32) / 65535.0
            if im.mode == "F":
                return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CaptureError(f"{path}: matte file not found") from None
    except _PIL_ERRORS as exc:
        raise CaptureError(f"{path}: unreadable matte ({exc})") from None


def _area_resize_axis(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Exact area average of ``arr`` along ``axis`` to ``n_out`` samples (float64).

    Output sample ``j`` averages the input interval ``[j, j + 1) * n_in / n_out``, fractional pixels weighted
    by their overlap: the difference of the piecewise-linear running integral at the interval's ends. For an
    integer factor this is a plain block mean (Pillow's ``Image.reduce``). Pillow's ``BOX`` resize is not used:
    for non-integer factors it samples the box kernel at pixel centres instead of integrating it, which weights
    3 -> 2 pixels as (1, 1, 0) / (0, 0, 1) instead of (1, 0.5, 0) / (0, 0.5, 1).
    """
    n_in = arr.shape[axis]
    if n_in == n_out:
        return arr
    a = np.moveaxis(arr, axis, 0).astype(np.float64)
    if n_in % n_out == 0:
        k = n_in // n_out
        out = a.reshape(n_out, k, *a.shape[1:]).mean(axis=1)
    else:
        integral = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)], axis=0)  # at 0..n_in
        edges = np.arange(n_out + 1) * (n_in / n_out)
        idx = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
        frac = (edges - idx).reshape(-1, *([1] * (a.ndim - 1)))
        at_edges = integral[idx] + frac * a[idx]  # running integral at each fractional edge
        out = (at_edges[1:] - at_edges[:-1]) / (n_in / n_out)
    return np.moveaxis(out, 0, axis)


def area_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact area averaging (box filter integrated over each output pixel) of an image.

    Args:
        arr: ``(H, W)`` or ``(H, W, C)`` array.
        size: target ``(width, height)``, each at most the input's.

    Returns:
        ``(H', W')`` or ``(H', W', C)`` float64.
    """
    return _area_resize_axis(_area_resize_axis(arr, size[1], 0), size[0], 1)


def resize_rgba(rgba: np.ndarray, size: tuple[int, int], rgb_is_straight_over_alpha: bool) -> np.ndarray:
    """Area-average an ``(H, W, 4)`` straight-alpha image to ``size = (W', H')``.

    Args:
        rgba: ``(H, W, 4)`` float32, straight alpha.
        size: target ``(width, height)``.
        rgb_is_straight_over_alpha: True when the RGB is only meaningful where alpha > 0 (an RGBA render, as
            NeRF-synthetic): the RGB is then averaged premultiplied and divided by the averaged alpha, so that
            transparent pixels' (arbitrary) colours do not bleed into the edges. False for a photo with a
            separate matte: its RGB is valid everywhere (the background is real) and is averaged as is.

    Returns:
        ``(H', W', 4)`` float32 straight alpha.
    """
    alpha = area_resize(rgba[..., 3], size)
    rgb_plain = area_resize(rgba[..., :3], size)
    if rgb_is_straight_over_alpha:
        premult = area_resize(rgba[..., :3] * rgba[..., 3:4].astype(np.float64), size)
        covered = alpha > 1e-6
        # Where every source pixel was transparent the colour is undefined; keep the plain average there.
        rgb = np.where(covered[..., None], premult / np.maximum(alpha, 1e-6)[..., None], rgb_plain)
    else:
        rgb = rgb_plain
    return np.clip(np.concatenate([rgb, alpha[..., None]], axis=-1), 0.0, 1.0).astype(np.float32)


def load_images(capture: Capture, indices: Sequence[int], scale: float = 1.0) -> np.ndarray:
    """Decode the images ``indices`` of ``capture`` as straight-alpha RGBA.

    Alpha is the matte file when the capture has mattes, else the image's own alpha, else 1. A matte file
    wins over an image alpha (it is the more specific input a user supplied).

    Args:
        capture: the capture.
        indices: ``(n,)`` view indices; all selected views must share one image size.
        scale: in (0, 1]; images are area-averaged (:func:`area_resize`) to ``H, W = round(size * scale)``, the same
            rounding as :meth:`Cameras.scaled`, so ``capture.cameras.scaled(scale)`` matches the pixels.

    Returns:
        ``(n, H, W, 4)`` float32 RGBA in [0, 1], straight (not premultiplied) alpha.

    Raises:
        CaptureError: unreadable image or matte, an image whose size differs from its camera's, a matte
            whose size differs from its image's, or selected views of different sizes.
        ValueError: ``scale`` outside (0, 1].
    """
    if not (0.0 < scale <= 1.0):
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    idx = [int(i) for i in indices]
    n_views = len(capture.cameras)
    for i in idx:
        if not 0 <= i < n_views:
            raise IndexError(f"view index {i} out of range for a capture of {n_views} views")
    cams = capture.cameras
    out_w = [max(1, round(int(cams.width[i]) * scale)) for i in idx]
    out_h = [max(1, round(int(cams.height[i]) * scale)) for i in idx]
    if len(set(zip(out_w, out_h, strict=True))) > 1:
        raise CaptureError(f"{capture.root}: the selected views have different image sizes "
                           f"({sorted(set(zip(out_w, out_h, strict=True)))}); load them in separate calls")
    if not idx:
        w0, h0 = max(1, round(int(cams.width[0]) * scale)), max(1, round(int(cams.height[0]) * scale))
        return np.zeros((0, h0, w0, 4), dtype=np.float32)
    out = np.empty((len(idx), out_h[0], out_w[0], 4), dtype=np.float32)
    for k, i in enumerate(idx):
        out[k] = _load_one(capture, i, (out_w[0], out_h[0]))
    return out


def _load_one(capture: Capture, i: int, size: tuple[int, int]) -> np.ndarray:
    path = capture.image_paths[i]
    rgba, file_alpha = read_rgba(path)
    want = (int(capture.cameras.width[i]), int(capture.cameras.height[i]))
    got = (rgba.shape[1], rgba.shape[0])
    if got != want:
        raise CaptureError(f"{path}: image is {got[0]}x{got[1]} but its camera expects {want[0]}x{want[1]}")
    if capture.matte_paths is not None:
        mpath = capture.matte_paths[i]
        matte = read_matte(mpath)
        if (matte.shape[1], matte.shape[0]) != got:
            raise CaptureError(f"{mpath}: matte is {matte.shape[1]}x{matte.shape[0]} but its image {path.name} "
                               f"is {got[0]}x{got[1]}")
        rgba[..., 3] = matte
    if size != got:
        # An RGBA file's RGB is only meaningful under alpha (averaged premultiplied); a photo's RGB is valid
        # everywhere, matte or not, and is averaged as is.
        rgba = resize_rgba(rgba, size, rgb_is_straight_over_alpha=file_alpha)
    return rgba
