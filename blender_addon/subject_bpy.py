"""The subject bounds in the scene: an empty drawn as a box or an ellipsoid around the captured head and
shoulders, which every job sends so the backend can tell the subject from the background.

The empty is parented to the capture's placement, so it moves with the capture, and drawn at display size 1:
its ``matrix_world`` maps the protocol's unit shape into the scene, and ``inverse(placement) · matrix_world``
is the protocol's capture-world ``matrix`` (:mod:`.core.subject_bounds`). It carries :data:`SUBJECT_KEY`; the
capture's subject bounds are the marked empty under its placement (or, without a placement, the unparented
one), so no pointer holds it alive when the artist deletes it.

It appears when a reconstruction finishes, from the bounds the backend found or was given
(:func:`on_reconstruct_done`), and remembers them (:data:`DETECTED_SHAPE_KEY`, :data:`DETECTED_MATRIX_KEY`):
while the empty still matches them it is *Detected* and a later reconstruction moves it; once the artist moved,
scaled, rotated or reshaped it (or added it by hand) it is *Edited* and kept. Undo does not take the backend's
bounds away (:func:`resync_after_undo`), as it does not take the job list away.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import mathutils
import numpy as np

from . import connection
from .cameras_bpy import matrix_to_numpy, numpy_to_matrix
from .capture_bpy import CAPTURE_FORMAT_KEY, CAPTURE_ROOT_KEY, CAPTURE_SUBJECT_KEY
from .core.captures import CAPTURE_FORMATS, capture_subject, read_capture
from .core.jobs import JobState
from .core.subject_bounds import (
    DISPLAY_SHAPE,
    SHAPE_DISPLAY,
    Bounds,
    bounds_from_param,
    bounds_in_capture,
    check_matrix,
    head_and_shoulders,
    same_bounds,
)

SUBJECT_KEY = "nerfart_subject"  # on the empty: it is a capture's subject bounds
DETECTED_SHAPE_KEY = "nerfart_detected_shape"  # on the empty: the last reconstruction's bounds...
DETECTED_MATRIX_KEY = "nerfart_detected_matrix"  # ...as 16 numbers, capture world, row-major
FIX_HINT = "give them a size, or delete them to let the backend find the subject"


# ---------------------------------------------------------------------------------------------------------
# Finding and reading the empty
# ---------------------------------------------------------------------------------------------------------


def find_subject(scene: bpy.types.Scene) -> bpy.types.Object | None:
    """The capture's subject bounds empty in ``scene``, or None.

    Raises:
        ValueError: when the capture has two (a duplicated empty carries the mark too), naming them.
    """
    placement = scene.nerfart.capture.placement
    found = [o for o in scene.objects if SUBJECT_KEY in o and o.type == "EMPTY" and o.parent == placement]
    if len(found) > 1:
        names = ", ".join(f"'{o.name}'" for o in found[:3])
        raise ValueError(f"the capture has {len(found)} subject bounds ({names}); delete all but one")
    return found[0] if found else None


def _placement_world(scene: bpy.types.Scene) -> np.ndarray | None:
    placement = scene.nerfart.capture.placement
    return matrix_to_numpy(placement.matrix_world) if placement is not None else None


def current_bounds(scene: bpy.types.Scene, empty: bpy.types.Object, evaluate: bool = True) -> Bounds:
    """What the empty draws, in capture world.

    ``evaluate`` brings transforms set from Python (scripts, tests) up to date first; drawing passes False
    (the viewport has evaluated them, and a panel must not evaluate the scene).

    Raises:
        ValueError: an empty drawn as neither a cube nor a sphere, or one with zero scale, saying what to do.
    """
    shape = DISPLAY_SHAPE.get(empty.empty_display_type)
    if shape is None:
        raise ValueError(f"the subject bounds '{empty.name}' are drawn as {empty.empty_display_type.title()}: "
                         "set their Shape to Box or Ellipsoid (NeRF-Art ▸ Capture ▸ Subject)")
    if evaluate:
        bpy.context.evaluated_depsgraph_get()  # writes evaluated transforms back to the objects
    try:
        return bounds_in_capture(_placement_world(scene), matrix_to_numpy(empty.matrix_world),
                                 float(empty.empty_display_size), shape, f"the subject bounds '{empty.name}'")
    except ValueError as exc:
        raise ValueError(f"{exc}: {FIX_HINT}") from None


def detected_bounds(empty: bpy.types.Object) -> Bounds | None:
    """The bounds the last reconstruction reported for this empty, or None (it was added by hand)."""
    shape, values = empty.get(DETECTED_SHAPE_KEY), empty.get(DETECTED_MATRIX_KEY)
    if shape not in SHAPE_DISPLAY or values is None or len(values) != 16:
        return None
    try:
        return Bounds(str(shape), check_matrix(np.array(values[:], dtype=np.float64).reshape(4, 4), "bounds"))
    except ValueError:
        return None


def job_bounds(scene: bpy.types.Scene) -> Bounds | None:
    """The subject bounds every job of ``scene`` sends, or None (no empty: the backend finds the subject).

    Raises:
        ValueError: two empties, a wrong display type or a zero scale, with what to do.
    """
    empty = find_subject(scene)
    return current_bounds(scene, empty) if empty is not None else None


@dataclass
class SubjectState:
    """What the Subject box of the sidebar shows."""

    state: str  # NONE, DETECTED, EDITED or ERROR
    text: str
    empty: bpy.types.Object | None = None
    can_reset: bool = False


def subject_state(scene: bpy.types.Scene, evaluate: bool = False) -> SubjectState:
    """Whether the capture has subject bounds, and whether they are still the detected ones (for the panel)."""
    try:
        empty = find_subject(scene)
    except ValueError as exc:
        return SubjectState("ERROR", str(exc))
    if empty is None:
        return SubjectState("NONE", "None: the backend finds the subject")
    detected = detected_bounds(empty)
    try:
        current = current_bounds(scene, empty, evaluate)
    except ValueError as exc:
        return SubjectState("ERROR", str(exc), empty, detected is not None)
    if detected is None:
        return SubjectState("EDITED", "Added by hand: every job uses these, and a finished reconstruction keeps "
                            "them", empty)
    if same_bounds(current, detected):
        return SubjectState("DETECTED", "Detected by the reconstruction", empty)
    return SubjectState("EDITED", "Edited: every job uses yours, and a finished reconstruction keeps them",
                        empty, True)


# ---------------------------------------------------------------------------------------------------------
# Writing the empty
# ---------------------------------------------------------------------------------------------------------


def _new_subject(scene: bpy.types.Scene) -> bpy.types.Object:
    """A new, marked subject bounds empty beside the capture's placement (in its collection), parented to it."""
    cap = scene.nerfart.capture
    placement = cap.placement
    base = cap.cameras.name if cap.cameras is not None else (placement.name if placement is not None else "NeRF-Art")
    empty = bpy.data.objects.new(f"{base} Subject", None)
    in_scene = {scene.collection, *scene.collection.children_recursive}
    homes = [c for c in (placement.users_collection if placement is not None else ()) if c in in_scene]
    (homes[0] if homes else scene.collection).objects.link(empty)
    empty[SUBJECT_KEY] = 1
    empty.empty_display_size = 1.0  # so that matrix_world maps the unit shape
    if placement is not None:
        empty.parent = placement
        empty.matrix_parent_inverse.identity()  # matrix_basis is then the capture-world map itself
    return empty


def _set_bounds(empty: bpy.types.Object, bounds: Bounds) -> Bounds:
    """Draw ``bounds`` (capture world) with ``empty``; returns them as the empty holds them.

    An empty holds a location, rotation and scale, so a sheared map becomes the nearest one without shear; what
    it holds is what counts as unedited afterwards.
    """
    empty.empty_display_type = SHAPE_DISPLAY[bounds.shape]
    empty.empty_display_size = 1.0
    parent_inverse = (mathutils.Matrix(empty.matrix_parent_inverse) if empty.parent is not None
                      else mathutils.Matrix.Identity(4))
    empty.matrix_basis = parent_inverse.inverted() @ numpy_to_matrix(bounds.matrix)
    return Bounds(bounds.shape, matrix_to_numpy(parent_inverse @ empty.matrix_basis))


def _remember(empty: bpy.types.Object, bounds: Bounds) -> None:
    empty[DETECTED_SHAPE_KEY] = bounds.shape
    empty[DETECTED_MATRIX_KEY] = [float(x) for x in bounds.matrix.ravel()]


def default_bounds(scene: bpy.types.Scene) -> Bounds:
    """Add Subject Bounds' box around the capture's subject, capture world: the one its import computed from
    where the cameras look (:func:`.capture_bpy.import_capture`), else computed now from its folder.

    Raises:
        ValueError: no capture imported or captured yet (or its folder cannot be read).
    """
    cap = scene.nerfart.capture
    coll = cap.cameras
    if coll is not None and CAPTURE_SUBJECT_KEY in coll and len(coll[CAPTURE_SUBJECT_KEY]) == 16:
        return Bounds("box", check_matrix(np.array(coll[CAPTURE_SUBJECT_KEY][:], dtype=np.float64).reshape(4, 4),
                                          "the default subject bounds"))
    # A capture imported before the box was stored with it: read its cameras again, as the import did.
    root = coll.get(CAPTURE_ROOT_KEY, "") if coll is not None else ""
    if not root:
        raise ValueError("import the capture first (Capture ▸ Import Capture): the box goes where its cameras look")
    fmt = coll.get(CAPTURE_FORMAT_KEY)
    capture = read_capture(root, fmt if fmt in CAPTURE_FORMATS else None)
    return Bounds("box", head_and_shoulders(capture_subject(capture)))


def add_default(scene: bpy.types.Scene) -> bpy.types.Object:
    """Add the capture's subject bounds by hand (before a reconstruction found them): the default box.

    Raises:
        ValueError: they exist already, or there is no capture to put them around.
    """
    if find_subject(scene) is not None:
        raise ValueError("the capture has subject bounds already")
    bounds = default_bounds(scene)
    empty = _new_subject(scene)
    _set_bounds(empty, bounds)
    return empty


def reset_to_detected(scene: bpy.types.Scene) -> bpy.types.Object:
    """Put the subject bounds back where the last reconstruction found them.

    Raises:
        ValueError: no subject bounds, or none detected yet.
    """
    empty = find_subject(scene)
    if empty is None:
        raise ValueError("the capture has no subject bounds")
    detected = detected_bounds(empty)
    if detected is None:
        raise ValueError("no reconstruction has reported subject bounds for these yet")
    _remember(empty, _set_bounds(empty, detected))
    return empty


def apply_result(scene: bpy.types.Scene, bounds: Bounds, given: bool) -> str:
    """Show a finished reconstruction's subject bounds; returns what happened: created, updated or kept.

    ``given``: the job was sent the bounds (so ``bounds`` repeats them rather than detecting new ones). An empty
    the artist edited (or added by hand) is kept; the bounds are remembered for Reset to Detected unless they
    merely repeat what was sent.

    Raises:
        ValueError: the capture has two subject bounds empties.
    """
    empty = find_subject(scene)
    if empty is None:
        empty = _new_subject(scene)
        _remember(empty, _set_bounds(empty, bounds))
        return "created"
    detected = detected_bounds(empty)
    try:
        edited = detected is None or not same_bounds(current_bounds(scene, empty), detected)
    except ValueError:  # a flattened or re-drawn empty is still the artist's doing
        edited = True
    if edited:
        if not given:
            _remember(empty, bounds)
        return "kept"
    _remember(empty, _set_bounds(empty, bounds))
    return "updated"


# ---------------------------------------------------------------------------------------------------------
# Reconstruction results, and undo
# ---------------------------------------------------------------------------------------------------------


def _token(job: JobState) -> str:
    """Names one arrival of a job's result (a job reattached and finished again arrives anew)."""
    return f"{job.job_id}#{job.meta.get('finished', 0)}"


def on_reconstruct_done(scene: bpy.types.Scene, job: JobState) -> str | None:
    """Show the subject bounds of a finished reconstruction; returns what happened, or None when its outputs
    hold none (a backend that predates them).

    Raises:
        ValueError: bounds that cannot be shown (malformed, flat) or two empties, in words.
    """
    value = job.outputs.get("subject_bounds")
    if value is None:
        return None
    placement = scene.nerfart.capture.placement
    job.meta["subject_placement"] = placement.name if placement is not None else ""
    scene.nerfart.capture.subject_token = _token(job)  # also when they cannot be shown: undo must not retry
    try:
        bounds = bounds_from_param(value)
    except ValueError as exc:
        raise ValueError(f"the reconstruction's subject bounds cannot be shown: {exc}") from None
    return apply_result(scene, bounds, given=job.params.get("subject_bounds") is not None)


def resync_after_undo() -> int:
    """After undo or redo: show the newest reconstruction's subject bounds again where the restored state
    predates their arrival; returns in how many scenes.

    Bounds come from the backend, like the job list (:func:`.tick.resync_jobs`): Ctrl+Z undoes the artist's
    last action, not the arrival of a result. A state after the arrival (the artist moved or deleted the empty
    since) is the artist's and stays as it is.
    """
    newest: dict[str, JobState] = {}
    for job in connection.session.jobs.values():
        if (job.kind == "reconstruct" and job.state == "done" and "finished" in job.meta
                and job.outputs.get("subject_bounds") is not None and "subject_placement" in job.meta):
            name = job.meta.get("scene", "")
            if name in bpy.data.scenes and (name not in newest
                                            or job.meta["finished"] > newest[name].meta["finished"]):
                newest[name] = job
    applied = 0
    for name, job in newest.items():
        scene = bpy.data.scenes[name]
        placement = scene.nerfart.capture.placement
        if scene.nerfart.capture.subject_token == _token(job):
            continue
        if (placement.name if placement is not None else "") != job.meta["subject_placement"]:
            continue  # undone back past the capture's import: there is nothing to put the bounds on
        try:
            on_reconstruct_done(scene, job)
        except ValueError:
            continue
        applied += 1
    return applied
