"""Frame files: RGBA PNG (8 or 16 bit, straight alpha, sRGB) and multilayer OpenEXR (float, linear,
premultiplied, with Blender's Depth and Normal passes).

The NeRF's colours are display-referred sRGB values, like the photos it learned from, so PNG stores them as
they are (a small dependency-free writer: zlib and struct). EXR is scene-linear with premultiplied alpha by
convention (Blender reads it that way), so its colours come linearised and multiplied by alpha (see
:func:`backend.jobs.render.linear_premultiplied`); it is written with the OpenEXR bindings.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def encode_png(rgba: np.ndarray, bit_depth: int = 8, compression: int = 3) -> bytes:
    """PNG bytes of an image.

    Args:
        rgba: ``(H, W, 4)`` straight alpha, sRGB: float in [0, 1] (quantized here to ``bit_depth``), or
            already quantized ``uint8`` (8-bit PNG) / ``uint16`` (16-bit PNG), e.g. by the GPU.
        bit_depth: 8 or 16 (must match integer input).
        compression: zlib level (3 is a good speed/size balance for renders streamed live).
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 4) image, got shape {rgba.shape}")
    if bit_depth not in (8, 16):
        raise ValueError(f"PNG bit depth must be 8 or 16, got {bit_depth}")
    h, w, _ = rgba.shape
    dtype = np.uint8 if bit_depth == 8 else np.dtype(">u2")  # PNG samples are big-endian
    if rgba.dtype.kind in "ui":
        if rgba.dtype.itemsize != bit_depth // 8:
            raise ValueError(f"{rgba.dtype} pixels do not match a {bit_depth}-bit PNG")
        pixels = rgba.astype(dtype, copy=False)
    else:
        scale = 255.0 if bit_depth == 8 else 65535.0
        pixels = np.clip(np.round(np.nan_to_num(rgba) * scale), 0, scale).astype(dtype)
    # Filter type 0 (None) on every row: each row is prefixed by a zero byte.
    raw = np.zeros((h, 1 + w * 4 * pixels.itemsize), dtype=np.uint8)
    raw[:, 1:] = pixels.reshape(h, -1).view(np.uint8)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 6, 0, 0, 0)  # colour type 6 = RGBA
    # zlib releases the GIL while it compresses, so frames encode in parallel on worker threads.
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compression)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function, inverted."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


# Blender's multilayer EXR naming: ``<view layer>.<pass>.<channel>``. A file Blender renders names its layer
# after the view layer ("ViewLayer" by default), and its Image node and compositor offer each pass as a socket.
EXR_LAYER = "ViewLayer"
EXR_PASSES = {"Combined": "RGBA", "Depth": "Z", "Normal": "XYZ"}


def exr_channel_names() -> list[str]:
    """Every channel of :func:`encode_exr_passes`, e.g. ``ViewLayer.Combined.R`` ... ``ViewLayer.Normal.Z``."""
    return [f"{EXR_LAYER}.{name}.{c}" for name, chans in EXR_PASSES.items() for c in chans]


def encode_exr_passes(rgba: np.ndarray, depth: np.ndarray, normal: np.ndarray) -> bytes:
    """Multilayer OpenEXR bytes holding Blender's Combined, Depth and Normal passes, float32, ZIP-compressed.

    Written with the OpenEXR bindings (``openexr`` on PyPI) as one scanline part with channels named as a
    Blender 4.2 multilayer render names them (``ViewLayer.Combined.R`` ..., ``ViewLayer.Depth.Z``,
    ``ViewLayer.Normal.X`` ...), which every Blender from 4.2 on opens as a multilayer image with those passes
    (5.x writes one part per pass; it reads either). Float32 throughout: the Depth pass's background value
    (1e10) is far beyond half floats' range (65504). ZIP, Blender's default, which every Blender reads
    (ZSTD is faster but newer than Blender 4.2's OpenEXR); about 160 ms for a 1080p frame on one core, with
    the GIL released, so the encode pool's threads overlap it with rendering.

    Args:
        rgba: ``(H, W, 4)`` scene-linear colour, premultiplied by alpha (what Blender expects in EXR).
        depth: ``(H, W)`` Blender Depth pass (view-axis distance in scene units; 1e10 for background).
        normal: ``(H, W, 3)`` Blender Normal pass (world-space normals).
    """
    import OpenEXR  # only an EXR render needs the bindings

    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 4) image, got shape {rgba.shape}")
    h, w, _ = rgba.shape
    if depth.shape != (h, w) or normal.shape != (h, w, 3):
        raise ValueError(f"depth must be {(h, w)} and normal {(h, w, 3)}, got {depth.shape} and {normal.shape}")
    planes = [rgba[..., k] for k in range(4)] + [depth] + [normal[..., k] for k in range(3)]
    channels = {name: np.ascontiguousarray(np.nan_to_num(p, nan=0.0, posinf=1e10, neginf=-1e10), dtype=np.float32)
                for name, p in zip(exr_channel_names(), planes, strict=True)}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    buf = io.BytesIO()
    # One thread per file: frames are already encoded in parallel (OrderedEncodePool).
    with OpenEXR.File(header, channels, num_threads=1) as exr:
        exr.write(buf)
    return buf.getvalue()
