"""Uploaded inputs: a capture sent as a zip by a client whose files are not on the backend's disk."""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

MAX_FILES = 20_000
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
# Photos and videos barely compress, so a capture zip expands to about its own size. One that expands to far
# more is a decompression bomb; the floor leaves room for small, very compressible files (JSON, masks).
MAX_EXPANSION_RATIO = 50
MIN_EXPANSION_ALLOWANCE = 256 * 1024**2
COPY_CHUNK = 1 << 20


def extract_capture_zip(zip_path: Path, dest: Path, max_bytes: int = MAX_UNCOMPRESSED_BYTES) -> Path:
    """Extract an uploaded capture zip into ``dest`` and return the capture folder inside it.

    Every member must stay inside ``dest`` (no absolute paths, no ``..``, no links). The bytes written are
    counted while extracting, whatever sizes the archive claims, and may not exceed the smallest of
    ``max_bytes`` (the room the caller has: the work dir's quota and free disk), :data:`MAX_UNCOMPRESSED_BYTES`
    and :data:`MAX_EXPANSION_RATIO` times the zip's size; nor may it hold more than :data:`MAX_FILES` files.
    So a hostile or broken upload can neither write elsewhere nor fill the disk. If extraction fails for any
    reason, ``dest`` is removed: no partial capture is left behind. A zip holding one top-level folder yields
    that folder.

    Raises:
        ValueError: naming the member at fault, saying what limit was reached, or that the file is not a zip.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"uploaded capture {zip_path.name} is not a readable zip file: {exc}") from None
    limit = min(max_bytes, MAX_UNCOMPRESSED_BYTES,
                max(MAX_EXPANSION_RATIO * zip_path.stat().st_size, MIN_EXPANSION_ALLOWANCE))
    with archive:
        members = archive.infolist()
        if len(members) > MAX_FILES:
            raise ValueError(f"uploaded capture has {len(members)} files; at most {MAX_FILES} are accepted")
        root = dest.resolve()
        targets = [_member_target(root, member) for member in members]
        claimed = sum(m.file_size for m in members)
        if claimed > limit:  # refused at once when the archive says so; its claims are not trusted otherwise
            raise ValueError(_too_big(claimed, limit, max_bytes))
        try:
            dest.mkdir(parents=True, exist_ok=True)
            written = 0
            for member, target in zip(members, targets, strict=True):
                written = _extract_member(archive, member, target, written, limit, max_bytes)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _member_target(root: Path, member: zipfile.ZipInfo) -> Path:
    """Where ``member`` goes under ``root``; refuses names that leave it and links."""
    name = PurePosixPath(member.filename)
    mode = member.external_attr >> 16
    if name.is_absolute() or ".." in name.parts or "\\" in member.filename or ":" in member.filename:
        raise ValueError(f"uploaded capture member {member.filename[:200]!r} points outside the capture folder")
    if stat.S_ISLNK(mode):
        raise ValueError(f"uploaded capture member {member.filename[:200]!r} is a link; links are not accepted")
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"uploaded capture member {member.filename[:200]!r} points outside the capture folder")
    return target


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, written: int, limit: int,
                    max_bytes: int) -> int:
    """Write one member, counting its bytes as they come; returns the bytes written so far in all."""
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return written
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise ValueError(_too_big(written, limit, max_bytes, at_least=True))
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise ValueError(f"uploaded capture member {member.filename[:200]!r} cannot be unpacked (a damaged or "
                         f"unsupported zip): {exc}") from None
    return written


def _too_big(size: int, limit: int, max_bytes: int, at_least: bool = False) -> str:
    why = ("the room left in the backend's work dir" if limit == max_bytes and max_bytes < MAX_UNCOMPRESSED_BYTES
           else "the most an upload may expand to")
    return (f"uploaded capture expands to {'more than ' if at_least else ''}{size / 2**20:.1f} MiB, over "
            f"{why} ({limit / 2**20:.1f} MiB); upload a smaller capture, or free space on the backend")
