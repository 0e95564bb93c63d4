"""Subject bounds in the jobs: read from a job's parameters, decided after a reconstruction, found for a source.

Every job kind takes ``params.subject_bounds`` in capture-world coordinates (the protocol's form). A
reconstruction decides its bounds once (the given ones, else detected from the trained density) and keeps them
in its checkpoint and outputs; later jobs on it use the given bounds, else the checkpoint's, else (a stylized
checkpoint written without them) the source reconstruction's; a checkpoint from before subject bounds has none,
and the whole scene is then the subject.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.jobstore.context import JobContext, JobFailed
from backend.jobstore.record import JobRecord

if TYPE_CHECKING:
    import torch

PARAM = "subject_bounds"
# Search grid and views of the detection for the tiny preset (CPU tests, smoke runs): an eighth of the
# default's voxels, seen from a third of its views (rays per view scale with the voxel size), a fraction of a
# second on one core for a tiny model.
TINY_DETECT_RESOLUTION = 48
TINY_DETECT_VIEWS = 8

log = logging.getLogger(__name__)


def identity_normalization() -> Any:
    """The normalization of a checkpoint whose cameras were already in model coordinates."""
    from captures.normalize import Normalization

    return Normalization(np.zeros(3), 1.0, method="identity")


def bounds_from_params(params: dict[str, Any], normalization: Any | None) -> Any:
    """``params.subject_bounds`` in model coordinates, or None when absent.

    Raises:
        JobFailed: bounds that cannot be used, naming the parameter and why.
    """
    from backend.nerf.subject import SubjectBounds, SubjectBoundsError

    given = params.get(PARAM)
    if given is None:
        return None
    try:
        return SubjectBounds.from_world(given, normalization or identity_normalization())
    except SubjectBoundsError as exc:
        raise JobFailed(f"params.{PARAM}: {exc}") from exc


def bounds_to_world(bounds: Any, normalization: Any | None) -> dict[str, Any] | None:
    """The protocol's capture-world form of model-coordinate bounds (None stays None)."""
    return None if bounds is None else bounds.to_world(normalization or identity_normalization())


@dataclass
class SubjectDecision:
    """What a reconstruction settled on.

    Attributes:
        bounds: model-coordinate :class:`~backend.nerf.subject.SubjectBounds`.
        source: ``"given"`` (params), ``"detected"`` (the density decided), ``"cameras"`` (the cameras' default,
            detection found no subject) or ``"checkpoint"`` (a resumed job's, decided before the interruption).
        note: why the cameras' default was used ("" otherwise).
        air: ``(R, R, R)`` bool occupancy cells that are not the person (:func:`left_out_cells`; detected subjects
            only, else None).
    """

    bounds: Any
    source: str
    note: str = ""
    air: Any = None

    @property
    def found(self) -> bool:
        return self.source != "cameras"


def detection_cameras(ckpt: Any) -> Any:
    """The cameras a reconstruction's subject is seen from, in model coordinates: its training views (the
    held-out ones stay out of everything the job decides), or all of them when it lists none."""
    cameras = ckpt.cameras if ckpt.normalization is None else ckpt.normalization.cameras_to_model(ckpt.cameras)
    train = [int(i) for i in ckpt.train_indices]
    return cameras.select(train) if train else cameras


def decide_reconstruction_subject(ckpt: Any, given: Any, device: str, *, tiny: bool = False) -> SubjectDecision:
    """The subject bounds of a finished reconstruction: ``given`` (from the params), else the checkpoint's own
    (a resumed job that had decided them), else detected from the surface its training cameras see."""
    from backend.nerf.subject import DETECT_VIEWS, SEARCH_RESOLUTION, detect_subject_bounds

    if given is not None:
        return SubjectDecision(given, "given")
    if ckpt.subject is not None:
        return SubjectDecision(ckpt.subject, "checkpoint")
    if ckpt.cameras is None:
        raise JobFailed("the reconstruction has no cameras to find the subject from")
    detection = detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), device,
                                      resolution=TINY_DETECT_RESOLUTION if tiny else SEARCH_RESOLUTION,
                                      n_views=TINY_DETECT_VIEWS if tiny else DETECT_VIEWS)
    if detection.found:
        return SubjectDecision(detection.bounds, "detected", air=left_out_cells(ckpt, detection))
    note = (f"subject bounds: {detection.reason}; using the cameras' default box around where they look (edit "
            "the bounds to fit the subject)")
    log.warning(note)
    return SubjectDecision(detection.bounds, "cameras", note)


#: The least fraction of the person's seen-surface voxels the difference key must keep to be applied.
KEY_MIN_PERSON_KEPT = 0.5


def left_out_cells(ckpt: Any, detection: Any, *, key: bool = True) -> torch.Tensor | None:
    """``(R, R, R)`` bool occupancy cells of ``ckpt`` that a found ``detection`` says are not the person: the air its
    cameras saw through, and (``key``) the haze that the detection views' difference keys put beside the person
    (:mod:`backend.nerf.subject_key`). None when the detection found no air."""
    from backend.nerf.subject import SeenAir
    from backend.nerf.subject_key import keyed_out_voxels, model_plates

    seen = detection.air
    if seen is None:
        return None
    voxels = seen.voxels
    # The key needs a background plate: a reconstruction with mattes has none (nothing to key against).
    if key and getattr(ckpt, "background", None) == "contract":
        keyed = keyed_out_voxels(model_plates(ckpt.model, detection.bounds), detection.views, seen.frame,
                                 seen.half_extent, seen.voxels.shape[0])
        person = detection.person
        kept = 1.0 if person is None or not person.any() else float((person & ~keyed).sum() / person.sum())
        if kept >= KEY_MIN_PERSON_KEPT:
            voxels = voxels | keyed
        else:
            # Haze hugs a person; it is never most of what the cameras see. A key that takes most of the seen
            # surface failed (a model too young to render its person opaque, a person the wall's colour).
            log.warning("subject: the difference key would leave out %.0f %% of the person's seen surface; "
                        "not applied (only the air the cameras saw through is left out)", 100 * (1 - kept))
    grid = ckpt.model.occupancy
    return SeenAir(voxels, seen.frame, seen.half_extent).cells(grid.resolution, ckpt.model.domain,
                                                               grid.binary.device)


def as_subject(ckpt: Any) -> int:
    """Make a freshly loaded checkpoint render its subject: its occupancy grid loses the cells that are not the
    person (``ckpt.subject_air``: its cameras saw through them, or their colours key them out beside the person),
    so haze the reconstruction left around a head (in front of a plain wall, beside the neck) is neither
    rendered, stylized nor meshed with the subject. The whole scene (a render with the background) keeps them:
    call this only where the checkpoint is used as the subject. Keeps ``subject_air``: a stylization of the
    subject reads it so that shape never grows into those cells (haze, and air that growth turned to cloud); a
    stylized checkpoint carries none. Returns the cells removed (0 when called again).
    """
    air = getattr(ckpt, "subject_air", None)
    if air is None:
        return 0
    grid = ckpt.model.occupancy.binary
    cut = grid & air.to(grid.device)
    removed = int(cut.sum())
    grid &= ~cut
    return removed


def reconstruction_of(ctx: JobContext, source: JobRecord) -> JobRecord | None:
    """The reconstruct job a stylize job started from (None for any other source).

    Raises:
        JobFailed: the stylize job's reconstruction is gone or not finished.
    """
    if source.kind != "stylize":
        return None
    rec_id = source.params.get("source_job")
    if not rec_id:
        raise JobFailed(f"stylize job {source.job_id} names no source reconstruction")
    return ctx.source_job(str(rec_id), ("reconstruct",))


def stylization_growth(source: JobRecord) -> float:
    """How far a stylize job grew its subject bounds (its ``shape_freedom``; 0 for other jobs, colour-only ones and
    freedom 0)."""
    if source.kind != "stylize" or source.outputs.get("colour_only"):
        return 0.0
    try:
        freedom = float(source.outputs.get("shape_freedom") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return freedom if math.isfinite(freedom) and freedom > 0 else 0.0


def source_subject(ctx: JobContext, source: JobRecord, ckpt: Any) -> tuple[Any, str]:
    """The subject bounds a job on ``source``'s checkpoint uses, and where they came from.

    ``params.subject_bounds`` first, then the checkpoint's, then (a stylized checkpoint without them) the source
    reconstruction's outputs; ``(None, "none")`` when nothing defines them (the whole scene is the subject).
    Given bounds of a stylization that let the shape grow are grown by its shape freedom, as the stylization grew
    them (:func:`backend.stylize.loop.stylization_subject`): the add-on sends the subject's own bounds with every
    job, and a hat that grew above them must not be cut off in the renders and meshes of the stylized model.

    Raises:
        JobFailed: unusable ``params.subject_bounds``.
    """
    from backend.nerf.subject import SubjectBounds, SubjectBoundsError

    given = bounds_from_params(ctx.params, ckpt.normalization)
    if given is not None:
        freedom = stylization_growth(source)
        if freedom > 0:
            return given.grown(freedom), f"given, grown by the stylization's shape freedom {freedom:g}"
        return given, "given"
    if ckpt.subject is not None:
        return ckpt.subject, "checkpoint"
    try:
        rec = reconstruction_of(ctx, source)
    except JobFailed:
        return None, "none"  # the reconstruction is gone: the stylized model is all there is
    world = rec.outputs.get(PARAM) if rec is not None else None
    if world is None:
        return None, "none"
    try:
        return SubjectBounds.from_world(world, ckpt.normalization or identity_normalization()), "reconstruction"
    except SubjectBoundsError:
        return None, "none"
