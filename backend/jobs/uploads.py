"""Uploaded inputs: a capture sent as a zip by a client whose files are not on the backend's disk."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

MAX_FILES = 20_000
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3


def extract_capture_zip(zip_path: Path, dest: Path) -> Path:
    """Extract an uploaded capture zip into ``dest`` and return the capture folder inside it.

    Every member must stay inside ``dest`` (no absolute paths, no ``..``, no links), and the archive must
    stay within :data:`MAX_FILES` files and :data:`MAX_UNCOMPRESSED_BYTES` bytes, so a hostile or broken
    upload cannot write elsewhere or fill the disk. A zip holding one top-level folder yields that folder.

    Raises:
        ValueError: naming the member at fault, or saying the file is not a zip.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"uploaded capture {zip_path.name} is not a readable zip file: {exc}") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_FILES:
            raise ValueError(f"uploaded capture has {len(members)} files; at most {MAX_FILES} are accepted")
        total = sum(m.file_size for m in members)
        if total > MAX_UNCOMPRESSED_BYTES:
            raise ValueError(f"uploaded capture unpacks to {total / 2**30:.1f} GiB; at most "
                             f"{MAX_UNCOMPRESSED_BYTES / 2**30:.0f} GiB are accepted")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for member in members:
            name = PurePosixPath(member.filename)
            mode = member.external_attr >> 16
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename or ":" in member.filename:
                raise ValueError(f"uploaded capture member {member.filename!r} points outside the capture folder")
            if stat.S_ISLNK(mode):
                raise ValueError(f"uploaded capture member {member.filename!r} is a link; links are not accepted")
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise ValueError(f"uploaded capture member {member.filename!r} points outside the capture folder")
        archive.extractall(root)
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root
