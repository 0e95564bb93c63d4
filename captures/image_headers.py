"""Image size and alpha from file headers (PNG, JPEG, BMP, TIFF, WebP), without decoding a pixel.

The readers check every image against its camera before any pixel is decoded, and Blender has to do it
without Pillow, so the headers are parsed here with the standard library. ``has_alpha`` is what Pillow
reports for the decoded image (its mode carries alpha, or a ``tRNS`` transparency colour), because the
backend decodes the pixels with Pillow and both must agree on whether a capture carries its own matte
(``tests/test_captures_image_headers.py`` compares the two on every mode each format can store):

* PNG: colour types 4 (grey + alpha) and 6 (RGBA), or a ``tRNS`` chunk before the first ``IDAT``, except on
  1-bit and 16-bit grey, which Pillow opens as modes ``1`` and ``I;16`` and whose transparency it drops.
* JPEG: never (the format has no alpha).
* BMP: 32-bit ``BI_BITFIELDS`` with an alpha mask (V3 header or later); Pillow reads other 32-bit files as RGB.
* TIFF: an ``ExtraSamples`` entry of 1 (premultiplied) or 2 (straight alpha), or RGB with four samples and no
  ``ExtraSamples`` tag.
* WebP: the ``VP8X`` alpha flag or the ``VP8L`` ``alpha_is_used`` bit; plain lossy ``VP8`` has none.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from .errors import CaptureError


class _Truncated(Exception):
    """The header ends before the field being read."""


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def image_header(path: Path) -> tuple[int, int, bool]:
    """``(width, height, has_alpha)`` of an image file, from its header.

    Raises:
        CaptureError: missing or unreadable file, a format other than those above, or a damaged header.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            fh.seek(0)
            try:
                if head.startswith(b"\x89PNG\r\n\x1a\n"):
                    return _png(fh)
                if head.startswith(b"\xff\xd8"):
                    return _jpeg(fh)
                if head.startswith(b"BM"):
                    return _bmp(fh)
                if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                    return _tiff(fh)
                if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                    return _webp(fh)
            except (_Truncated, struct.error):
                raise CaptureError(f"{path}: unreadable image (damaged or truncated header)") from None
    except FileNotFoundError:
        raise CaptureError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read the image ({exc.strerror or exc})") from None
    raise CaptureError(f"{path}: unreadable image (not a PNG, JPEG, BMP, TIFF or WebP file)")


def _checked(width: int, height: int) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise _Truncated
    return width, height


def _png(fh: BinaryIO) -> tuple[int, int, bool]:
    fh.seek(8)
    length, tag = struct.unpack(">I4s", _read(fh, 8))
    if tag != b"IHDR" or length < 13:
        raise _Truncated
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", _read(fh, 10))
    fh.seek(length - 10 + 4, 1)  # rest of IHDR and its CRC
    has_trns = False
    while True:  # ancillary chunks up to the image data: tRNS must come before the first IDAT
        length, tag = struct.unpack(">I4s", _read(fh, 8))
        if tag in (b"IDAT", b"IEND"):
            break
        has_trns = has_trns or tag == b"tRNS"
        fh.seek(length + 4, 1)
    alpha = colour_type in (4, 6) or (has_trns and not (colour_type == 0 and bit_depth in (1, 16)))
    return (*_checked(width, height), alpha)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); they hold the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(fh: BinaryIO) -> tuple[int, int, bool]:
    fh.seek(2)
    while True:
        byte = _read(fh, 1)
        while byte != b"\xff":  # skip to the next marker (stray bytes are tolerated, as decoders do)
            byte = _read(fh, 1)
        while byte == b"\xff":  # fill bytes
            byte = _read(fh, 1)
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        (length,) = struct.unpack(">H", _read(fh, 2))
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">xHH", _read(fh, 5))
            return (*_checked(width, height), False)
        if marker == 0xD9 or length < 2:
            raise _Truncated
        fh.seek(length - 2, 1)


def _bmp(fh: BinaryIO) -> tuple[int, int, bool]:
    fh.seek(14)
    (header_size,) = struct.unpack("<I", _read(fh, 4))
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes, no alpha
        width, height = struct.unpack("<HH", _read(fh, 4))
        return (*_checked(width, abs(height)), False)
    if header_size < 40:
        raise _Truncated
    width, height, _planes, bits, compression = struct.unpack("<iiHHI", _read(fh, 16))
    alpha = False
    if bits == 32 and compression == 3 and header_size >= 56:  # BI_BITFIELDS with an alpha mask field
        fh.seek(14 + 40)
        masks = struct.unpack("<4I", _read(fh, 16))
        alpha = masks[3] != 0 or not any(masks)
    return (*_checked(width, abs(height)), alpha)


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the integer types these tags use
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_PHOTOMETRIC, _TIFF_SAMPLES, _TIFF_EXTRA = 256, 257, 262, 277, 338


def _tiff(fh: BinaryIO) -> tuple[int, int, bool]:
    order = "<" if _read(fh, 2) == b"II" else ">"
    (version,) = struct.unpack(order + "H", _read(fh, 2))
    big = version == 43  # BigTIFF: 8-byte offsets and counts
    if big:
        fh.seek(8)
        (ifd,) = struct.unpack(order + "Q", _read(fh, 8))
    else:
        (ifd,) = struct.unpack(order + "I", _read(fh, 4))
    fh.seek(ifd)
    count_fmt, entry_fmt, inline = ("Q", "HHQ", 8) if big else ("H", "HHI", 4)
    (n_entries,) = struct.unpack(order + count_fmt, _read(fh, struct.calcsize(order + count_fmt)))
    tags: dict[int, tuple[int, ...]] = {}
    for _ in range(min(n_entries, 4096)):
        tag, typ, count = struct.unpack(order + entry_fmt, _read(fh, struct.calcsize(order + entry_fmt)))
        raw = _read(fh, inline)
        if tag not in (_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_PHOTOMETRIC, _TIFF_SAMPLES, _TIFF_EXTRA):
            continue
        if typ not in _TIFF_TYPES or count > 16:
            raise _Truncated
        fmt = order + _TIFF_TYPES[typ] * count
        size = struct.calcsize(fmt)
        if size <= inline:
            tags[tag] = struct.unpack(fmt, raw[:size])
        else:  # the values live elsewhere; the entry holds their offset
            here = fh.tell()
            fh.seek(struct.unpack(order + ("Q" if big else "I"), raw)[0])
            tags[tag] = struct.unpack(fmt, _read(fh, size))
            fh.seek(here)
    if _TIFF_WIDTH not in tags or _TIFF_HEIGHT not in tags:
        raise _Truncated
    extra = tags.get(_TIFF_EXTRA, ())
    rgb_with_unnamed_fourth = (not extra and tags.get(_TIFF_PHOTOMETRIC, (0,))[0] == 2
                               and tags.get(_TIFF_SAMPLES, (1,))[0] == 4)
    alpha = any(e in (1, 2, 999) for e in extra) or rgb_with_unnamed_fourth
    return (*_checked(tags[_TIFF_WIDTH][0], tags[_TIFF_HEIGHT][0]), alpha)


def _webp(fh: BinaryIO) -> tuple[int, int, bool]:
    fh.seek(12)
    tag = _read(fh, 4)
    fh.seek(20)  # the first chunk's payload
    if tag == b"VP8X":
        flags = _read(fh, 4)[0]
        size = _read(fh, 6)
        width = 1 + int.from_bytes(size[:3], "little")
        height = 1 + int.from_bytes(size[3:], "little")
        return (*_checked(width, height), bool(flags & 0x10))
    if tag == b"VP8L":
        if _read(fh, 1) != b"\x2f":
            raise _Truncated
        (bits,) = struct.unpack("<I", _read(fh, 4))
        return (*_checked((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), bool((bits >> 28) & 1))
    if tag == b"VP8 ":
        frame = _read(fh, 10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise _Truncated
        width, height = struct.unpack("<HH", frame[6:10])
        return (*_checked(width & 0x3FFF, height & 0x3FFF), False)
    raise _Truncated
