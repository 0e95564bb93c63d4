"""A loaded capture (:class:`Capture`) and format auto-detection (:func:`load_capture`).

Format preference when a folder holds several (fangzhou has ``sparse/0``, ``cameras.npz`` and
``poses_bounds.npy``): **COLMAP sparse > transforms.json > cameras.npz > poses_bounds.npy**, most
information first:

* COLMAP keeps the lens distortion, per-camera intrinsics and the sparse points (used to normalise); the
  other three are usually derived from it and each drops something.
* transforms.json (nerfstudio / instant-ngp) can carry distortion and per-frame intrinsics, but no points.
* cameras.npz keeps the full pinhole K (non-square focal, off-centre principal point) but no distortion,
  and its pixel-centre convention is ambiguous (see :mod:`idr`).
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


def _resolve(path: Path, fmt: str | None, split: str | None) -> tuple[str, Path, dict[str, Path], list[str]]:
    """Pick ``(format, source file or model folder, every source found, notes)`` for :func:`load_capture`.

    The sources found are those of a folder searched by format; a file or model folder given directly
    yields only itself.
    """
    notes: list[str] = []
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
        return guessed, path, {guessed: path}, notes

    if not is_colmap_model_dir(path) and is_colmap_model_dir(path / "0"):
        path = path / "0"  # the "sparse" folder itself was given
    if is_colmap_model_dir(path):
        if fmt not in (None, "colmap"):
            raise CaptureError(f"{path}: format={fmt!r} was requested but the folder is a COLMAP model")
        if split is not None:
            raise CaptureError(f"{path}: split={split!r} only applies to transforms_<split>.json captures")
        return "colmap", path, {"colmap": path}, notes

    found = _candidates(path, split)
    if split is not None:
        if "transforms_json" not in found:
            raise CaptureError(
                f"{path / f'transforms_{split}.json'}: not found; split= picks a NeRF-synthetic style "
                "transforms_<split>.json. Captures without split files use Capture.split(holdout_every)"
            )
        if fmt not in (None, "transforms_json"):
            raise CaptureError(f"{path}: split={split!r} only applies to format='transforms_json', not {fmt!r}")
        return "transforms_json", found["transforms_json"], found, notes
    if fmt is not None:
        if fmt not in found:
            raise CaptureError(f"{path}: no {fmt} camera file; {_looked_for(path, split)}")
        return fmt, found[fmt], found, notes
    if not found:
        raise CaptureError(f"{path}: no recognised capture format; {_looked_for(path, split)}")
    chosen = next(f for f in FORMATS if f in found)
    if len(found) > 1:
        others = ", ".join(f"{f} ({found[f].relative_to(path)})" for f in FORMATS if f in found and f != chosen)
        notes.append(f"several formats present; read {chosen} ({found[chosen].relative_to(path)}), the most "
                     f"complete, rather than {others}")
    return chosen, found[chosen], found, notes


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
    fmt, source, found, notes = _resolve(path, format, split)
    warnings: list[str] = []

    points3d = near_far = scale_mat = None
    mask_paths: list[Path] | None = None
    if fmt == "colmap":
        colmap_model = read_colmap_model(source)
        images_dir = images_dir_for_model(source, within=limit)
        if images_dir is None:
            raise CaptureError(f"{source}: no images/ folder found next to the COLMAP model")
        cameras, image_paths, skipped = _registered_images(colmap_model, images_dir, limit)
        try:
            in_folder = list_images(images_dir)
        except CaptureError:  # all registered images are in sub-folders of images/
            in_folder = []
        idr_file = found.get("idr")
        if skipped and format is None and idr_file is not None and idr_camera_count(idr_file) == len(in_folder):
            # The COLMAP model describes a folder that no longer exists; cameras.npz was written for this one.
            notes.append(f"read {idr_file.name}, not the COLMAP model: the model registers {len(skipped)} image(s) "
                         f"that {images_dir.name}/ no longer holds (e.g. {skipped[0]}), while {idr_file.name} has "
                         f"exactly one camera per image present; pass format='colmap' to use the model's "
                         f"{len(image_paths)} remaining views instead")
            notes = [n for n in notes if not n.startswith("several formats present")]
            fmt, source = "idr", idr_file
        else:
            root = images_dir.parent
            points3d = colmap_model.points3d
            if skipped:
                warnings.append(f"{len(skipped)} of {len(skipped) + len(image_paths)} images registered in the COLMAP "
                                f"model are not in {images_dir.name}/ and are skipped (e.g. {skipped[0]}); the "
                                f"{len(image_paths)} present are used")
            registered = {p.resolve() for p in image_paths}
            unregistered = [p for p in in_folder if p.resolve() not in registered]
            if unregistered:
                notes.append(f"{len(unregistered)} image(s) in {images_dir.name}/ are not registered in the COLMAP "
                             f"model and are left out, e.g. {unregistered[0].name}")
    if fmt == "transforms_json":
        tj = read_transforms_json(source, confine_to=limit)
        cameras, image_paths, mask_paths = tj.cameras, tj.image_paths, tj.mask_paths
        root = source.parent
    elif fmt == "idr":
        root = source.parent
        sibling = find_colmap_model(root)
        intr = None
        if sibling is not None:
            try:
                intr = _single_intrinsics(cameras_from_colmap(read_colmap_model(sibling)))
            except CaptureError:
                intr = None
        idr = read_idr_cameras(source, colmap_intrinsics=intr)
        cameras, image_paths, scale_mat = idr.cameras, idr.image_paths, idr.scale_mat
        notes.extend(idr.notes)
    elif fmt == "llff":
        llff = read_llff(source)
        cameras, image_paths, near_far = llff.cameras, llff.image_paths, llff.near_far
        root = source.parent

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
    normalization = _normalization(fmt, source, root, cameras, scale_mat, points3d, near_far, notes)
    return Capture(cameras=cameras, image_paths=image_paths, matte_paths=mask_paths, has_alpha=has_alpha,
                   source_format=fmt, root=root, normalization=normalization, points3d=points3d,
                   near_far=near_far, notes=notes, source=source, warnings=warnings)


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
        CaptureError: no registered image is present, or a name leaves the confining folder.
    """
    cameras = cameras_from_colmap(model)
    paths = [inside(limit, images_dir, im.name, f"{model.path}: image name {im.name!r}") if limit is not None
             else images_dir / im.name for im in model.images]
    present = [i for i, p in enumerate(paths) if p.is_file()]
    if not present:
        raise CaptureError(f"{images_dir}: none of the {len(paths)} images the COLMAP model {model.path} registers "
                           f"is in the folder (e.g. {model.images[0].name})")
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
