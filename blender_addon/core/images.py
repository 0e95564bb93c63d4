"""Image sizes from file headers (PNG, JPEG, OpenEXR), without decoding pixels or importing bpy."""

from __future__ import annotations

import struct
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".PNG", ".JPG", ".JPEG", ".EXR")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG, JPEG or OpenEXR file, read from its header.

    Raises:
        ValueError: if the file is not one of those formats or its header is damaged (the message names it).
        OSError: if it cannot be read.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if head.startswith(b"\xff\xd8"):
            fh.seek(2)
            return _jpeg_size(fh, p)
        if head.startswith(b"\x76\x2f\x31\x01"):
            fh.seek(8)
            return _exr_size(fh, p)
    raise ValueError(f"{p.name}: not a PNG, JPEG or OpenEXR image (cannot read its size)")


def _jpeg_size(fh, p: Path) -> tuple[int, int]:
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while True:
        byte = fh.read(1)
        while byte and byte != b"\xff":
            byte = fh.read(1)
        while byte == b"\xff":
            byte = fh.read(1)
        if not byte:
            break
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) != 2:
            break
        (length,) = struct.unpack(">H", length_bytes)
        if marker in sof:
            data = fh.read(5)
            if len(data) != 5:
                break
            h, w = struct.unpack(">HH", data[1:5])
            return int(w), int(h)
        fh.seek(length - 2, 1)
    raise ValueError(f"{p.name}: damaged JPEG (no frame header found)")


def _exr_size(fh, p: Path) -> tuple[int, int]:
    def read_cstr() -> bytes:
        out = bytearray()
        while True:
            c = fh.read(1)
            if not c:
                raise ValueError(f"{p.name}: damaged OpenEXR header")
            if c == b"\x00":
                return bytes(out)
            out += c
            if len(out) > 255:
                raise ValueError(f"{p.name}: damaged OpenEXR header")

    while True:
        name = read_cstr()
        if not name:
            break
        read_cstr()  # attribute type
        (size,) = struct.unpack("<i", fh.read(4))
        value = fh.read(size)
        if name == b"dataWindow" and size == 16:
            xmin, ymin, xmax, ymax = struct.unpack("<iiii", value)
            return xmax - xmin + 1, ymax - ymin + 1
    raise ValueError(f"{p.name}: OpenEXR header has no dataWindow")


def resolve_image(base: Path, file_path: str) -> Path | None:
    """The image a capture file refers to: ``base / file_path``, trying common extensions when it has none.

    NeRF-synthetic files write ``"./train/r_0"`` without an extension. Returns None if nothing exists.
    """
    candidate = (base / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if candidate.is_file():
        return candidate
    for ext in IMAGE_EXTENSIONS:
        with_ext = candidate.with_name(candidate.name + ext)
        if with_ext.is_file():
            return with_ext
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTENSIONS)
