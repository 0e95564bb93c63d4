"""Frame files: RGBA PNG (8 or 16 bit, straight alpha, sRGB) and OpenEXR (float, linear, premultiplied).

The NeRF's colours are display-referred sRGB values, like the photos it learned from, so PNG stores them as
they are. EXR is scene-linear with premultiplied alpha by convention (Blender reads it that way), so colours
are linearised and multiplied by alpha, and a depth map can ride along as a ``Z`` channel.

Both writers are small and dependency-free (zlib and struct), so the backend needs no OpenEXR or OpenCV.
"""

from __future__ import annotations

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


def encode_exr(rgba: np.ndarray, depth: np.ndarray | None = None) -> bytes:
    """Uncompressed scanline OpenEXR bytes with float32 channels A, B, G, R (and Z).

    Args:
        rgba: ``(H, W, 4)`` float in [0, 1], straight alpha, sRGB (converted to linear, premultiplied).
        depth: optional ``(H, W)`` float32 depth (``inf`` where nothing was hit is written as a large value).
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 4) image, got shape {rgba.shape}")
    h, w, _ = rgba.shape
    alpha = np.clip(rgba[..., 3], 0, 1)
    rgb = srgb_to_linear(np.clip(rgba[..., :3], 0, 1)) * alpha[..., None]
    channels = {"A": alpha, "B": rgb[..., 2], "G": rgb[..., 1], "R": rgb[..., 0]}
    if depth is not None:
        if depth.shape != (h, w):
            raise ValueError(f"depth must have shape {(h, w)}, got {depth.shape}")
        channels["Z"] = np.nan_to_num(depth, nan=1e10, posinf=1e10)
    names = sorted(channels)  # EXR stores channels in alphabetical order

    def attr(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for n in names) + b"\0"
    box = struct.pack("<iiii", 0, 0, w - 1, h - 1)
    header = (struct.pack("<ii", 20000630, 2)  # magic, version 2 (single-part scanline)
              + attr("channels", "chlist", chlist)
              + attr("compression", "compression", b"\0")
              + attr("dataWindow", "box2i", box)
              + attr("displayWindow", "box2i", box)
              + attr("lineOrder", "lineOrder", b"\0")
              + attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
              + attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
              + attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
              + b"\0")
    # One scanline per block: y, byte count, then each channel's row in channel order.
    rows = np.stack([channels[n].astype("<f4") for n in names], axis=1)  # (H, C, W)
    line_bytes = len(names) * w * 4
    table_end = len(header) + 8 * h
    offsets = table_end + np.arange(h, dtype=np.uint64) * (8 + line_bytes)
    blocks = np.zeros((h, 8 + line_bytes), dtype=np.uint8)
    blocks[:, 0:4] = np.arange(h, dtype="<i4")[:, None].view(np.uint8)
    blocks[:, 4:8] = np.full((h, 1), line_bytes, dtype="<i4").view(np.uint8)
    blocks[:, 8:] = rows.reshape(h, -1).view(np.uint8)
    return header + offsets.astype("<u8").tobytes() + blocks.tobytes()
