"""The files of a capture: listing image folders, resolving the paths camera files name, pairing mattes.

No pixel is decoded here (sizes and alpha come from :mod:`.image_headers`); the backend decodes them with
Pillow (``backend/nerf/capture_images.py``). The rules below are the only ones: the backend and the Blender
add-on read captures through this package, so they agree on which files a capture is made of.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .confine import inside
from .errors import CaptureError

# Extensions taken as images when a format lists a folder (IDR, LLFF) or a transforms.json path omits it:
# the formats :mod:`.image_headers` parses and Pillow decodes (OpenEXR is neither: no capture tool writes
# photos as EXR, and the backend could not train on them).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Matte folders, in the order they are looked for next to the images.
MATTE_DIR_NAMES = ("matte", "masks", "mask")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (as IDR, NeuS and LLFF's loaders sort them).

    Raises:
        CaptureError: the folder is missing or holds no image files.
    """
    if not folder.is_dir():
        raise CaptureError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CaptureError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    return files


def find_images_dir(root: Path) -> Path:
    """``images/`` (COLMAP, LLFF, nerfstudio) or ``image/`` (IDR, NeuS) under ``root``.

    Raises:
        CaptureError: neither exists.
    """
    for name in ("images", "image"):
        if (root / name).is_dir():
            return root / name
    raise CaptureError(f"{root}: no images/ (or image/) folder next to the camera file")


def resolve_image_path(base: Path, file_path: str, kind: str = "image", confine_to: Path | None = None,
                       where: str = "") -> Path:
    """An image path from a transforms.json ``file_path``: relative to ``base``, extension optional.

    NeRF-synthetic writes ``./train/r_0`` for ``train/r_0.png``; the extensions of :data:`IMAGE_EXTENSIONS`
    (lower and upper case) are tried when the path as written does not exist.

    Args:
        confine_to: when given, the path must stay inside this folder (checked before anything is looked up,
            see :func:`.confine.inside`).
        where: the entry that names the file, for messages (e.g. ``"transforms.json, frames[3]"``).

    Raises:
        CaptureError: no file matches, or the path leaves ``confine_to``.
    """
    if confine_to is not None:
        p = inside(confine_to, base, file_path, f"{where}: {kind} path {file_path!r}")
    else:
        p = Path(file_path)
        p = p if p.is_absolute() else base / p
    if p.is_file():
        return p
    for ext in IMAGE_EXTENSIONS:
        for cand in (p.with_name(p.name + ext), p.with_name(p.name + ext.upper())):
            if cand.is_file():
                return cand
    raise CaptureError(f"{p}: {kind} file not found (also tried the extensions {', '.join(IMAGE_EXTENSIONS)})")


def find_matte_dir(root: Path) -> Path | None:
    """The first of ``matte/``, ``masks/``, ``mask/`` under ``root``, or ``None``."""
    for name in MATTE_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    return None


def natural_key(path: Path) -> list[str | int]:
    """Sort key that orders the digit runs of a name by value: ``2.png`` before ``10.png``.

    For zero-padded names (``0002.png``, ``0010.png``) it is plain name order.
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def match_mattes(image_paths: Sequence[Path], matte_dir: Path) -> tuple[list[Path], str | None]:
    """One matte per image: by file stem (any image extension), else by sorted order when that is unambiguous.

    Stems first: ``matte/000001.png`` is the matte of ``images/000001.jpg``; extra mattes are ignored (a split
    file may use a subset of the images). When *no* image has a matte of its stem, the mattes are named
    otherwise (``matte/0000.png`` beside ``images/img_0000.jpg``): if the images all lie in one folder holding
    exactly as many images as there are mattes, the i-th matte in sorted order (digit runs compared by value,
    :func:`natural_key`) is the i-th image's, and the returned note says so.

    Returns:
        The matte of each image, and a note for the user when they were paired by order (else ``None``).

    Raises:
        CaptureError: some images have no matte of their stem while others do, two mattes share a stem, or
            the counts differ so that no pairing is safe.
    """
    mattes = sorted((p for p in matte_dir.iterdir()
                     if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
                    key=natural_key)
    by_stem: dict[str, Path] = {}
    for p in mattes:
        if p.stem in by_stem:
            raise CaptureError(f"{matte_dir}: two mattes for the stem {p.stem!r} ({by_stem[p.stem].name}, {p.name})")
        by_stem[p.stem] = p
    missing = [p for p in image_paths if p.stem not in by_stem]
    if not missing:
        return [by_stem[p.stem] for p in image_paths], None
    folders = {p.parent for p in image_paths}
    if len(missing) == len(image_paths) and len(folders) == 1:
        folder_images = sorted(list_images(folders.pop()), key=natural_key)
        if len(folder_images) == len(mattes):
            pairs = dict(zip(folder_images, mattes, strict=True))
            note = (f"mattes paired with the images by sorted order ({matte_dir.name}/{mattes[0].name} is the matte "
                    f"of {folder_images[0].name}, ..., {matte_dir.name}/{mattes[-1].name} of "
                    f"{folder_images[-1].name}): no matte has an image's name and both folders hold "
                    f"{len(mattes)} files")
            return [pairs[p] for p in image_paths], note
    raise CaptureError(
        f"{matte_dir}: no matte for {len(missing)} of {len(image_paths)} images, e.g. {missing[0]} (mattes are "
        f"matched by file stem, {missing[0].stem}.png, or by sorted order when none matches by stem and the "
        f"image folder holds as many images as there are mattes); {len(mattes)} mattes found"
    )
