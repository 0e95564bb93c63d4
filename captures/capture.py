"""A loaded capture (:class:`Capture`) and format auto-detection (:func:`load_capture`).

Format preference when a folder holds several (fangzhou has ``sparse/0``, ``cameras.npz`` and
``poses_bounds.npy``): **COLMAP sparse > transforms.json > cameras.npz > poses_bounds.npy**, most
information first:

* COLMAP keeps the lens distortion, per-camera intrinsics and the sparse points (used to normalise); the
  other three are usually derived from it and each drops something.
* transforms.json (nerfstudio / instant-ngp) can carry distortion and per-frame intrinsics, but no points.
* cameras.npz keeps the full pinhole K (non-square focal, off-centre principal point) but no distortion,
  and its pixel-centre convention is ambiguous (see :mod:`idr`). A COLMAP model beside it that describes
  the same views settles both: its K decides the convention, and its lens distortion is carried over with
  a warning saying so (:mod:`.colmap_lens`); a model that cannot be matched gets a warning instead.
* poses_bounds.npy assumes one focal and a centred principal point, so its intrinsics are the least exact.

Whatever format is read, information from the others is reused for the normalisation when their cameras
are provably the same (same views, same centres): an IDR ``scale_mat`` first, then COLMAP points (see
:mod:`normalize`). Decisions of this kind are written to :attr:`Capture.notes`.

Real captures are not always as their tools left them, and the loader keeps what it can rather than refuse:

* **Frames deleted after SfM.** A COLMAP model may register images the folder no longer holds: the
  registered images that exist are used and :attr:`Capture.warnings` says how many were skipped. If a
  ``cameras.npz`` beside it has exactly one camera per image present (it was written for the folder as it
  is now), auto-detection reads it instead and says why.
* **Mattes named by index** (``matte/0000.png`` beside ``images/img_0000.jpg``): paired in sorted order when
  no matte has an image's name and the counts match (:func:`.images.match_mattes`), with a warning.

This package is numpy-only (no torch, Pillow or bpy): the backend and the Blender add-on both read captures
through it, so they see the same cameras. Pixels are decoded by the backend (``backend/nerf/capture_images.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cameras import Cameras
from .colmap import (
    ColmapModel,
    cameras_from_colmap,
    find_colmap_model,
    images_dir_for_model,
    is_colmap_model_dir,
    read_colmap_model,
)
from .colmap_lens import lens_from_colmap
from .confine import inside, refuse_links, refuse_outside
from .errors import CaptureError
from .idr import idr_camera_count, read_idr_cameras
from .image_headers import image_header
from .images import find_matte_dir, list_images, match_mattes
from .llff import read_llff
from .normalize import (
    Normalization,
    normalization_from_cameras,
    normalization_from_points,
    normalization_from_scale_mat,
)
from .transforms_json import read_transforms_json

FORMATS = ("colmap", "transforms_json", "idr", "llff")  # in order of preference
MIN_VIEWS = 3
_IDR_FILES = ("cameras.npz", "cameras_sphere.npz")
_LLFF_FILES = ("poses_bounds.npy",)
_SPLITS = ("train", "val", "test")


@dataclass
class Capture:
    """A multi-view capture, cameras in the capture's own world.

    Attributes:
        cameras: ``N`` cameras, OpenCV axes, capture world units.
        image_paths: ``N`` image files, one per camera.
        matte_paths: ``N`` matte files (``matte/``, ``masks/`` or ``mask/`` matched by stem or, failing
            that, by sorted order; or transforms.json ``mask_path``), or ``None``.
        has_alpha: the image files carry an alpha matte (RGBA).
        source_format: ``"transforms_json"``, ``"colmap"``, ``"idr"`` or ``"llff"``.
        root: the capture folder (parent of the image folder / the camera file's folder).
        normalization: world <-> model mapping.
        points3d: ``(n_points, 3)`` COLMAP sparse points (world), when the capture has them.
        near_far: ``(N, 2)`` LLFF depth bounds (world units), when given.
        notes: human-readable decisions the loader took (format chosen, conventions, normalisation source).
        source: the camera file that was read (transforms.json, cameras.npz, ...) or the COLMAP model folder.
        warnings: what a user must know because it may not be what they meant: images skipped, mattes
            paired by order. The reconstruct job reports them; the add-on shows them on import.
    """

    cameras: Cameras
    image_paths: list[Path]
    matte_paths: list[Path] | None
    has_alpha: bool
    source_format: str
    root: Path
    normalization: Normalization
    points3d: np.ndarray | None = None
    near_far: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def has_matte(self) -> bool:
        """Whether a foreground matte is available (separate files or the images' alpha)."""
        return self.matte_paths is not None or self.has_alpha

    def __len__(self) -> int:
        return len(self.cameras)

    def split(self, holdout_every: int) -> tuple[list[int], list[int]]:
        """Train / held-out view indices: views ``0, k, 2k, ...`` are held out (LLFF's ``llffhold`` rule).

        Args:
            holdout_every: ``k``; 0 holds out nothing. Must not be 1 (nothing would be left to train on).

        Returns:
            ``(train, held_out)`` sorted index lists that partition ``range(N)``.
        """
        n = len(self.cameras)
        if holdout_every == 0:
            return list(range(n)), []
        if holdout_every < 2:
            raise ValueError(f"holdout_every must be 0 (no hold-out) or >= 2, got {holdout_every}")
        held = list(range(0, n, holdout_every))
        train = [i for i in range(n) if i % holdout_every != 0]
        return train, held


def _looked_for(root: Path, split: str | None) -> str:
    json_names = f"transforms_{split}.json" if split else "transforms.json / transforms_train.json"
    return (f"looked in {root} for: sparse/0 or sparse (COLMAP cameras/images/points3D .bin or .txt), "
            f"{json_names}, {' / '.join(_IDR_FILES)} (IDR), {' / '.join(_LLFF_FILES)} (LLFF)")


def _candidates(root: Path, split: str | None) -> dict[str, Path]:
    """The camera sources present in a folder, per format."""
    found: dict[str, Path] = {}
    model = find_colmap_model(root)
    if model is not None:
        found["colmap"] = model
    json_names = [f"transforms_{split}.json"] if split else ["transforms.json", "transforms_train.json"]
    for name in json_names:
        if (root / name).is_file():
            found["transforms_json"] = root / name
            break
    for name in _IDR_FILES:
        if (root / name).is_file():
            found["idr"] = root / name
            break
    for name in _LLFF_FILES:
        if (root / name).is_file():
            found["llff"] = root / name
            break
    return found


def _resolve(path: Path, fmt: str | None, split: str | None) -> tuple[str, Path, dict[str, Path]]:
    """Pick ``(format, source file or model folder, candidates)`` for a path given to :func:`load_capture`.

    ``candidates`` holds every camera source of the folder when the format was auto-detected among them
    (else only the one chosen), so that the choice can be revisited and explained.
    """
    if path.is_file():
        if split is not None:
            raise CaptureError(f"{path}: split={split!r} selects a transforms_<split>.json inside a folder; "
                               "pass the folder, or the json file without split")
        name = path.name.lower()
        if name.endswith(".json"):
            guessed = "transforms_json"
        elif name.endswith(".npz"):
            guessed = "idr"
        elif name.endswith(".npy"):
            guessed = "llff"
        elif path.parent.is_dir() and is_colmap_model_dir(path.parent) and path.stem in ("cameras", "images",
                                                                                           "points3D"):
            guessed, path = "colmap", path.parent
        else:
            raise CaptureError(f"{path}: not a recognised camera file (transforms*.json, cameras*.npz, "
                               "poses_bounds.npy, or a COLMAP model's cameras/images/points3D)")
        if fmt is not None and fmt != guessed:
            raise CaptureError(f"{path}: format={fmt!r} was requested but the file is {guessed}")
        return guessed, path, {guessed: path}

    if not is_colmap_model_dir(path) and is_colmap_model_dir(path / "0"):
        path = path / "0"  # the "sparse" folder itself was given
    if is_colmap_model_dir(path):
        if fmt not in (None, "colmap"):
            raise CaptureError(f"{path}: format={fmt!r} was requested but the folder is a COLMAP model")
        if split is not None:
            raise CaptureError(f"{path}: split={split!r} only applies to transforms_<split>.json captures")
        return "colmap", path, {"colmap": path}

    found = _candidates(path, split)
    if split is not None:
        if "transforms_json" not in found:
            raise CaptureError(
                f"{path / f'transforms_{split}.json'}: not found; split= picks a NeRF-synthetic style "
                "transforms_<split>.json. Captures without split files use Capture.split(holdout_every)"
            )
        if fmt not in (None, "transforms_json"):
            raise CaptureError(f"{path}: split={split!r} only applies to format='transforms_json', not {fmt!r}")
        return "transforms_json", found["transforms_json"], {"transforms_json": found["transforms_json"]}
    if fmt is not None:
        if fmt not in found:
            raise CaptureError(f"{path}: no {fmt} camera file; {_looked_for(path, split)}")
        return fmt, found[fmt], {fmt: found[fmt]}
    if not found:
        raise CaptureError(f"{path}: no recognised capture format; {_looked_for(path, split)}")
    chosen = next(f for f in FORMATS if f in found)
    return chosen, found[chosen], found


def _choice_note(folder: Path, found: dict[str, Path], chosen: str, why: str) -> str:
    others = ", ".join(f"{f} ({found[f].relative_to(folder)})" for f in FORMATS if f in found and f != chosen)
    return f"several formats present; read {chosen} ({found[chosen].relative_to(folder)}), {why}, rather than {others}"


def _same_views(a: Cameras, b: Cameras) -> bool:
    """Whether two readings of a capture are the same views in the same world (names and centres agree).

    Centres must agree to 1e-4 of the cameras' spread: the files of one capture are written from the same
    numbers, so anything looser means a different world frame.
    """
    if len(a) != len(b) or list(a.names) != list(b.names):
        return False
    ca, cb = a.c2w[:, :3, 3], b.c2w[:, :3, 3]
    spread = float(np.max(np.ptp(ca, axis=0))) or 1.0
    return bool(np.max(np.linalg.norm(ca - cb, axis=1)) <= 1e-4 * spread)


def _single_intrinsics(model_cams: Cameras) -> tuple[float, float, float, float] | None:
    k = np.stack([model_cams.fx, model_cams.fy, model_cams.cx, model_cams.cy], axis=1)
    return tuple(float(v) for v in k[0]) if np.allclose(k, k[0]) else None  # type: ignore[return-value]


def load_capture(path: str | Path, *, format: str | None = None, split: str | None = None,
                 confine_to: str | Path | None = None) -> Capture:
    """Load a capture folder (format auto-detected) or one camera file.

    Args:
        path: a folder, or a ``transforms*.json``, ``cameras*.npz``, ``poses_bounds.npy`` file, or a COLMAP
            model folder (``sparse/0``) or one of its files.
        format: force one of :data:`FORMATS`; default: the most complete present (module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``: read ``transforms_<split>.json`` (NeRF-synthetic). By
            default a folder's ``transforms.json`` is read, else ``transforms_train.json``.
        confine_to: a folder every file of the capture must lie inside (:mod:`.confine`): no links in it, no
            absolute or escaping ``..`` paths in its camera files. The backend passes it for uploaded captures.
            It is an option rather than the rule because a capture on one's own disk may rightly name images
            elsewhere (instant-ngp and nerfstudio files with absolute paths, a split json beside a shared
            ``../images``), while the only way files nobody vetted reach the backend is an upload: a
            ``capture_path`` already lets an authorised client read any folder the backend account can, so
            confining it would stop nothing.

    Returns:
        The :class:`Capture`, normalisation included.

    Raises:
        CaptureError: anything wrong with the files, naming the file.
    """
    if format is not None and format not in FORMATS:
        raise CaptureError(f"{path}: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if split is not None and split not in _SPLITS:
        raise CaptureError(f"{path}: unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
    path = Path(path).expanduser()
    limit = None
    if confine_to is not None:
        limit, path = _confined(path, Path(confine_to))
    if not path.exists():
        raise CaptureError(f"{path}: no such file or folder")
    fmt, source, found = _resolve(path, format, split)
    folder = path.parent if path.is_file() else path
    why = "the most complete"
    reading = _read_colmap(source, limit) if fmt == "colmap" else None
    if reading is not None and reading.skipped and "idr" in found and \
            idr_camera_count(found["idr"]) == reading.images_in_folder:
        # The COLMAP model describes a folder that no longer exists; the cameras.npz was written for this one.
        why = (f"as the COLMAP model registers {len(reading.skipped)} image(s) that are gone (e.g. "
               f"{reading.skipped[0]}) and {found['idr'].name} has exactly one camera per image present; "
               "format='colmap' reads the model's remaining views")
        fmt, source, reading = "idr", found["idr"], None
    if reading is None:  # (the IDR and LLFF readers list an image folder inside the capture: nothing to confine)
        reading = {"transforms_json": _read_transforms, "idr": _read_idr, "llff": _read_llff}[fmt](source, limit)
    if not reading.image_paths:  # a COLMAP model whose every registered image is gone
        raise CaptureError(f"{reading.root / 'images'}: none of the {len(reading.skipped)} images the COLMAP model "
                           f"{source} registers is in the folder (e.g. {reading.skipped[0]})")
    notes = ([_choice_note(folder, found, fmt, why)] if len(found) > 1 else []) + reading.notes
    warnings = reading.warnings
    cameras, image_paths, mask_paths, root = reading.cameras, reading.image_paths, reading.mask_paths, reading.root

    if len(cameras) < MIN_VIEWS:
        raise CaptureError(f"{source}: only {len(cameras)} view(s); at least {MIN_VIEWS} are needed")
    try:
        cameras.validate()
    except ValueError as exc:
        raise CaptureError(f"{source}: {exc}") from None

    if mask_paths is None:
        matte_dir = find_matte_dir(root)
        if matte_dir is not None:
            mask_paths, pairing_note = match_mattes(image_paths, matte_dir)
            notes.append(f"mattes from {matte_dir.name}/")
            if pairing_note:
                warnings.append(pairing_note)
    if limit is not None:  # every reader builds its paths inside; this keeps it so for any future one
        refuse_outside(limit, [*image_paths, *(mask_paths or [])])
    has_alpha = _check_image_files(cameras, image_paths, mask_paths, source)
    normalization = _normalization(fmt, source, root, cameras, reading.scale_mat, reading.points3d,
                                   reading.near_far, notes)
    return Capture(cameras=cameras, image_paths=image_paths, matte_paths=mask_paths, has_alpha=has_alpha,
                   source_format=fmt, root=root, normalization=normalization, points3d=reading.points3d,
                   near_far=reading.near_far, notes=notes, source=source, warnings=warnings)


@dataclass
class _Reading:
    """What one format's reader found, before the checks every capture gets.

    Attributes:
        skipped: registered images that are not in the folder (COLMAP).
        images_in_folder: how many images the image folder holds (COLMAP; registered or not).
    """

    cameras: Cameras
    image_paths: list[Path]
    root: Path
    mask_paths: list[Path] | None = None
    points3d: np.ndarray | None = None
    near_far: np.ndarray | None = None
    scale_mat: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    images_in_folder: int = 0


def _read_colmap(model_dir: Path, limit: Path | None) -> _Reading:
    """A COLMAP model with the registered images that exist (a warning counts the others)."""
    model = read_colmap_model(model_dir)
    images_dir = images_dir_for_model(model_dir, within=limit)
    if images_dir is None:
        raise CaptureError(f"{model_dir}: no images/ folder found next to the COLMAP model")
    cameras, image_paths, skipped = _registered_images(model, images_dir, limit)
    try:
        in_folder = list_images(images_dir)
    except CaptureError:  # every registered image is in a sub-folder of images/
        in_folder = []
    reading = _Reading(cameras, image_paths, images_dir.parent, points3d=model.points3d, skipped=skipped,
                       images_in_folder=len(in_folder))
    if skipped:
        reading.warnings.append(f"{len(skipped)} of {len(skipped) + len(image_paths)} images registered in the "
                                f"COLMAP model are not in {images_dir.name}/ and are skipped (e.g. {skipped[0]}); "
                                f"the {len(image_paths)} present are used")
    registered = {p.resolve() for p in image_paths}
    unregistered = [p for p in in_folder if p.resolve() not in registered]
    if unregistered:
        reading.notes.append(f"{len(unregistered)} image(s) in {images_dir.name}/ are not registered in the COLMAP "
                             f"model and are left out, e.g. {unregistered[0].name}")
    return reading


def _read_transforms(path: Path, limit: Path | None) -> _Reading:
    tj = read_transforms_json(path, confine_to=limit)
    return _Reading(tj.cameras, tj.image_paths, path.parent, mask_paths=tj.mask_paths)


def _read_idr(path: Path, limit: Path | None) -> _Reading:
    """A cameras.npz, and what a COLMAP model beside it knows that the file does not.

    A model with the same intrinsics decides the pixel-centre convention (:mod:`.idr`); one that describes the
    same views lends its lens distortion, which a cameras.npz cannot hold (:mod:`.colmap_lens`).
    """
    sibling = find_colmap_model(path.parent)
    model: ColmapModel | CaptureError | None = None
    intr = None
    if sibling is not None:
        try:
            model = read_colmap_model(sibling)
            intr = _single_intrinsics(cameras_from_colmap(model))
        except CaptureError as exc:  # unreadable, or a lens model our cameras cannot represent
            model = model or exc
    idr = read_idr_cameras(path, colmap_intrinsics=intr)
    reading = _Reading(idr.cameras, idr.image_paths, path.parent, scale_mat=idr.scale_mat, notes=list(idr.notes))
    if sibling is not None and model is not None:
        lens = lens_from_colmap(idr.cameras, path.name, model, sibling.relative_to(path.parent).as_posix())
        if lens.distortion is not None:
            reading.cameras.distortion = lens.distortion
        reading.warnings += [lens.warning] if lens.warning else []
        reading.notes += [lens.note] if lens.note else []
    return reading


def _read_llff(path: Path, limit: Path | None) -> _Reading:
    llff = read_llff(path)
    return _Reading(llff.cameras, llff.image_paths, path.parent, near_far=llff.near_far)


def _confined(path: Path, confine_to: Path) -> tuple[Path, Path]:
    """The confining folder (resolved, link-free) and ``path`` made absolute inside it.

    Raises:
        CaptureError: ``path`` is not inside ``confine_to``, or the folder holds a link.
    """
    limit = confine_to.expanduser().resolve()
    if not limit.is_dir():
        raise CaptureError(f"{confine_to}: the folder a capture is confined to does not exist")
    refuse_links(limit)
    absolute = Path(os.path.normpath(path if path.is_absolute() else Path.cwd() / path))
    if not absolute.is_relative_to(limit):
        raise CaptureError(f"{path}: the capture is not inside {limit}, the folder it is confined to")
    return limit, absolute


def _registered_images(model: ColmapModel, images_dir: Path, limit: Path | None
                       ) -> tuple[Cameras, list[Path], list[str]]:
    """The cameras and image files of the registered images present in ``images_dir``, and the names absent.

    A model may register images deleted after the reconstruction (blurred or unwanted frames): those are
    left out so that the rest of the capture stays usable.

    Raises:
        CaptureError: a name leaves the confining folder.
    """
    cameras = cameras_from_colmap(model)
    paths = [inside(limit, images_dir, im.name, f"{model.path}: image name {im.name!r}") if limit is not None
             else images_dir / im.name for im in model.images]
    present = [i for i, p in enumerate(paths) if p.is_file()]
    skipped = [im.name for i, im in enumerate(model.images) if i not in set(present)]
    return cameras.select(present), [paths[i] for i in present], skipped


def _check_image_files(cameras: Cameras, image_paths: list[Path], mask_paths: list[Path] | None,
                       source: Path) -> bool:
    """Check every image's and matte's header against its camera (no pixel decoded); whether images have alpha.

    Raises:
        CaptureError: an unreadable file, a size other than the camera's, images with and without alpha.
    """
    alphas = []
    for i, img in enumerate(image_paths):
        w, h, alpha = image_header(img)
        if (w, h) != (int(cameras.width[i]), int(cameras.height[i])):
            raise CaptureError(f"{img}: image is {w}x{h} but {source.name} gives its camera "
                               f"{int(cameras.width[i])}x{int(cameras.height[i])}")
        alphas.append(alpha)
    if any(alphas) and not all(alphas):
        odd = image_paths[alphas.index(not alphas[0], 1)]
        raise CaptureError(f"{odd}: some images have an alpha channel and others do not "
                           f"(e.g. {image_paths[0].name} {'has' if alphas[0] else 'has not'})")
    for i, matte in enumerate(mask_paths or []):
        w, h, _ = image_header(matte)
        if (w, h) != (int(cameras.width[i]), int(cameras.height[i])):
            raise CaptureError(f"{matte}: matte is {w}x{h} but its image {image_paths[i].name} is "
                               f"{int(cameras.width[i])}x{int(cameras.height[i])}")
    return bool(alphas[0])


def _normalization(fmt: str, source: Path, root: Path, cameras: Cameras, scale_mat: np.ndarray | None,
                   points3d: np.ndarray | None, near_far: np.ndarray | None, notes: list[str]) -> Normalization:
    """Rules of :mod:`normalize`, reusing sibling files whose cameras are provably the capture's."""
    if scale_mat is None and fmt != "idr":
        idr_file = next((root / n for n in _IDR_FILES if (root / n).is_file()), None)
        if idr_file is not None:
            try:
                idr = read_idr_cameras(idr_file, pixel_centers="half")
                if idr.scale_mat is not None and _same_views(idr.cameras, cameras):
                    scale_mat = idr.scale_mat
                    notes.append(f"normalisation from {idr_file.name}'s scale_mat (same cameras)")
                else:
                    notes.append(f"{idr_file.name} ignored for normalisation: no scale_mat or different cameras")
            except CaptureError as exc:
                notes.append(f"{idr_file.name} ignored for normalisation: {exc}")
    if scale_mat is not None:
        return normalization_from_scale_mat(scale_mat, str(source))

    if points3d is None and fmt != "colmap":
        model_dir = find_colmap_model(root)
        if model_dir is not None:
            try:
                model = read_colmap_model(model_dir)
                if _same_views(cameras_from_colmap(model), cameras):
                    points3d = model.points3d
                    notes.append(f"normalisation from the COLMAP points in {model_dir} (same cameras)")
            except CaptureError as exc:
                notes.append(f"COLMAP model {model_dir} ignored for normalisation: {exc}")
    if points3d is not None and len(points3d) >= 10:
        try:
            return normalization_from_points(cameras, points3d)
        except CaptureError as exc:
            notes.append(f"normalisation from points failed ({exc}); using the cameras")
    return normalization_from_cameras(cameras, near_far, source=str(source))
