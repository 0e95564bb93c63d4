"""Image headers read without Pillow (captures.image_headers) agree with what Pillow decodes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.nerf.capture_images import _mode_has_alpha
from captures import CaptureError, image_header

W, H = 7, 5  # not square, so width and height cannot be swapped unnoticed

# (format, Pillow mode, save options): every mode each format can store with Pillow.
CASES = [
    *[("PNG", m, {}) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")],
    ("PNG", "L", {"transparency": 3}), ("PNG", "RGB", {"transparency": (1, 2, 3)}), ("PNG", "P", {"transparency": 0}),
    ("PNG", "I;16", {"transparency": 3}), ("PNG", "1", {"transparency": 0}),
    ("JPEG", "L", {}), ("JPEG", "RGB", {}), ("JPEG", "RGB", {"progressive": True}), ("JPEG", "CMYK", {}),
    *[("BMP", m, {}) for m in ("1", "L", "P", "RGB", "RGBA")],
    *[("TIFF", m, {}) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK", "PA", "F")],
    ("TIFF", "RGBA", {"compression": "tiff_lzw"}), ("TIFF", "RGB", {"compression": "tiff_deflate"}),
    ("WEBP", "RGB", {}), ("WEBP", "RGBA", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {"lossless": True}),
]


def _pillow(path: Path) -> tuple[int, int, bool]:
    with Image.open(path) as im:
        im.load()  # decoded, as the backend decodes it
        return im.width, im.height, _mode_has_alpha(im)


@pytest.mark.parametrize(("fmt", "mode", "options"), CASES, ids=[f"{f}-{m}-{'-'.join(o)}" for f, m, o in CASES])
def test_header_agrees_with_pillow(tmp_path: Path, fmt: str, mode: str, options: dict) -> None:
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8), "RGBA")
    # Random alpha keeps the alpha channel (encoders may drop an all-opaque one, and then both sides say so).
    im = im.convert(mode) if mode not in ("I;16", "F", "PA") else im.convert("L").convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, fmt, **options)
    assert image_header(path) == _pillow(path) == (W, H, image_header(path)[2])


def _bmp_v4(path: Path, masks: tuple[int, int, int, int], compression: int = 3) -> Path:
    """A 32-bit BMP with a BITMAPV4HEADER (108 bytes) and the given channel masks, bottom-up rows."""
    pixels = bytes(range(4 * W * H))
    header = struct.pack("<IiiHHIIiiII4I", 108, W, H, 1, 32, compression, len(pixels), 2835, 2835, 0, 0, *masks)
    header += b"sRGB" + bytes(36) + bytes(12)  # colour space, endpoints, gamma
    offset = 14 + len(header)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels)
    return path


@pytest.mark.parametrize(("masks", "compression"), [
    ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), 3),  # BI_BITFIELDS with an alpha mask: RGBA
    ((0xFF0000, 0xFF00, 0xFF, 0x0), 3),  # no alpha mask: RGB
    ((0, 0, 0, 0), 0),  # BI_RGB: Pillow reads the fourth byte as padding
])
def test_bmp_alpha_masks_agree_with_pillow(tmp_path: Path, masks: tuple, compression: int) -> None:
    path = _bmp_v4(tmp_path / "x.bmp", masks, compression)
    assert image_header(path) == _pillow(path)


def test_big_endian_and_bigtiff_sizes(tmp_path: Path) -> None:
    # Hand-written minimal TIFFs: width 300 (SHORT), height 70000 (LONG), RGB, no strips (header only).
    entries = [(256, 3, 1, 300), (257, 4, 1, 70000), (262, 3, 1, 2), (277, 3, 1, 3)]
    mm = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", len(entries))
    for tag, typ, count, value in entries:
        mm += struct.pack(">HHI", tag, typ, count) + (struct.pack(">HH", value, 0) if typ == 3 else struct.pack(">I", value))
    (tmp_path / "mm.tif").write_bytes(mm + b"\0\0\0\0")
    assert image_header(tmp_path / "mm.tif") == (300, 70000, False)
    big = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", len(entries) + 1)
    for tag, typ, count, value in [*entries, (338, 3, 1, 2)]:  # ExtraSamples = 2: straight alpha
        big += struct.pack("<HHQ", tag, typ, count) + struct.pack("<Q", value)
    (tmp_path / "big.tif").write_bytes(big + bytes(8))
    assert image_header(tmp_path / "big.tif") == (300, 70000, True)


def test_bad_files_are_named(tmp_path: Path) -> None:
    Image.new("RGB", (W, H)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:20])
    with pytest.raises(CaptureError, match=r"cut\.png: unreadable image \(damaged or truncated header\)"):
        image_header(tmp_path / "cut.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(CaptureError, match=r"notes\.png: unreadable image \(not a PNG, JPEG, BMP, TIFF or WebP"):
        image_header(tmp_path / "notes.png")
    with pytest.raises(CaptureError, match=r"gone\.png: image file not found"):
        image_header(tmp_path / "gone.png")
    (tmp_path / "x.exr").write_bytes(b"\x76\x2f\x31\x01" + bytes(60))  # OpenEXR: the backend cannot decode it
    with pytest.raises(CaptureError, match="not a PNG, JPEG"):
        image_header(tmp_path / "x.exr")
