"""Keeping a capture whose files nobody vetted (an upload) inside its own folder.

A capture's camera files name other files: transforms.json ``file_path``/``mask_path``, COLMAP image names.
From an upload, those names are written by whoever sent it, and ``/etc/passwd``, ``../../key`` or a link
would make the backend read, train on and render back a file the sender could not otherwise see. With
``confine_to`` (:func:`captures.load_capture`), every file a capture reads must lie inside that folder:

* the folder may hold no symbolic links at all (:func:`refuse_links`), so within it a path's lexical form is
  its real location;
* every path built from a name in a camera file is normalised lexically and must stay inside
  (:func:`inside`): absolute paths and ``..`` that leave the folder are refused.

Both checks look at names only, never at what lies outside the folder, and they run before any file is
opened: the error is the same whether the named file exists or not, and no byte of it is ever read, so no
message can echo it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import CaptureError

_WHY = "an uploaded capture's files must lie inside it (no absolute paths, no '..' out of it, no links)"


def refuse_links(root: Path) -> None:
    """Raise if anything under ``root`` (``root`` included) is a symbolic link.

    Raises:
        CaptureError: naming the link relative to ``root``, never its target.
    """
    if root.is_symlink():
        raise CaptureError(f"the capture folder {root.name} is a link; {_WHY}")
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink():
                raise CaptureError(f"{path.relative_to(root)} is a link; {_WHY}")


def inside(root: Path, base: Path, name: str, what: str) -> Path:
    """``base / name`` normalised lexically, provided it stays inside ``root``.

    Args:
        root: the confining folder (absolute, holding no links: :func:`refuse_links`).
        base: the folder ``name`` is relative to (inside ``root``).
        name: the path as a camera file writes it.
        what: says where ``name`` comes from, for the message (e.g. ``"frames[3]: image path '../x.png'"``).

    Raises:
        CaptureError: the path is absolute or leaves ``root``.
    """
    if Path(name).is_absolute():
        raise CaptureError(f"{what} is absolute; {_WHY}")
    path = Path(os.path.normpath(base / name))
    if not path.is_relative_to(root):
        raise CaptureError(f"{what} leaves the capture folder; {_WHY}")
    return path


def refuse_outside(root: Path, paths: Iterable[Path]) -> None:
    """Raise if any of ``paths`` (absolute) does not lie inside ``root`` once normalised lexically.

    Raises:
        CaptureError: naming the file by its name only.
    """
    for path in paths:
        if not Path(os.path.normpath(path)).is_relative_to(root):
            raise CaptureError(f"{path.name} lies outside the capture folder; {_WHY}")
