"""Which (frame, camera) pairs a render job samples: frame ranges, timeline markers, rigs. Pure data.

The bpy layer walks the returned plan with ``scene.frame_set(frame)`` and reads each camera's pose and lens at
that frame (so keyframed motion, constraints and an animated lens are all honoured); this module only decides
*what* to sample, which keeps that decision testable without Blender.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SAMPLE_MODES = ("ACTIVE", "RIG")
RIG_FRAME_MODES = ("CURRENT", "RANGE")


@dataclass(frozen=True)
class Marker:
    """A timeline marker: its frame and the camera it binds (None if it binds none)."""

    frame: int
    camera: str | None
    hidden: bool = False  # a bound camera that is hidden from render is skipped, as in Blender


@dataclass(frozen=True)
class Sample:
    """One image to render: the frame to evaluate and the camera to read there.

    ``camera`` is None in ACTIVE mode: the bpy layer reads ``scene.camera`` after ``frame_set`` (markers switch
    it), and :func:`marker_camera_at` predicts which that will be.
    """

    frame: int
    camera: str | None


def frame_range(frame_start: int, frame_end: int, frame_step: int = 1) -> list[int]:
    """``range(frame_start, frame_end + 1, frame_step)`` as a list, with readable errors.

    Raises:
        ValueError: if the step is below 1 or the range is empty.
    """
    if frame_step < 1:
        raise ValueError(f"frame step must be at least 1, got {frame_step}")
    if frame_end < frame_start:
        raise ValueError(f"the frame range is empty: end {frame_end} is before start {frame_start}")
    return list(range(int(frame_start), int(frame_end) + 1, int(frame_step)))


def marker_camera_at(markers: Iterable[Marker], frame: int) -> str | None:
    """The camera timeline markers make active at ``frame`` (Blender's ``BKE_scene_camera_switch_find``).

    The bound marker with the largest frame ≤ ``frame`` wins; before the first bound marker the earliest one
    applies; markers without a camera (or whose camera is hidden from render) are ignored. None if there is
    no bound marker at all (then ``scene.camera`` stays as set).
    """
    best: Marker | None = None
    first: Marker | None = None
    for m in markers:
        if m.camera is None or m.hidden:
            continue
        if m.frame <= frame and (best is None or m.frame > best.frame):
            best = m
        if first is None or m.frame < first.frame:
            first = m
    chosen = best if best is not None else first
    return chosen.camera if chosen is not None else None


def plan_active_camera(frames: Sequence[int]) -> list[Sample]:
    """One sample per frame, camera read from ``scene.camera`` after ``frame_set`` (ACTIVE mode)."""
    if not frames:
        raise ValueError("no frames to render")
    return [Sample(int(f), None) for f in frames]


def plan_rig(cameras: Sequence[str], frames: Sequence[int]) -> list[Sample]:
    """Every rig camera at every frame, frame-major (all cameras at frame f, then frame f + step).

    Raises:
        ValueError: if the rig holds no camera or there are no frames.
    """
    if not cameras:
        raise ValueError("the rig collection holds no camera objects")
    if not frames:
        raise ValueError("no frames to render")
    return [Sample(int(f), name) for f in frames for name in sorted(cameras)]


def frame_file_name(index: int, camera: str, frame: int, extension: str = "png", multi_camera: bool = False) -> str:
    """The output file name of one rendered frame.

    Single-camera sequences are ``frame_0001.png`` (so Blender loads them as one image sequence); rigs get
    ``<camera>/frame_0001.png`` so each camera is its own sequence.
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in camera) or "camera"
    stem = f"frame_{frame:04d}" if frame >= 0 else f"frame_m{-frame:04d}"
    return f"{safe}/{stem}.{extension}" if multi_camera else f"{stem}.{extension}"


def frame_of_file(name: str) -> int | None:
    """The frame a file named by :func:`frame_file_name` holds (``frame_m0003.exr`` -> -3), else None."""
    stem, dot, ext = name.rpartition(".")
    if not dot or ext not in ("png", "exr") or not stem.startswith("frame_"):
        return None
    digits = stem[len("frame_"):]
    sign = -1 if digits.startswith("m") else 1
    digits = digits.removeprefix("m")
    return sign * int(digits) if digits.isdigit() else None


def sequence_image_user(first_frame: int, last_frame: int) -> tuple[int, int, int]:
    """``(frame_start, frame_duration, frame_offset)`` for an ``ImageUser`` that shows the frame files
    ``frame_<first>`` .. ``frame_<last>`` of a sequence at the scene frames they were rendered for.

    Blender picks the file number ``scene_frame - frame_start + 1 + frame_offset`` (clamped to
    ``1..frame_duration`` before the offset is added), so a sequence that starts at frame 10 needs an offset
    of 9: without it scene frame 10 would show ``frame_0001`` (a file that does not exist).
    """
    first, last = int(first_frame), int(last_frame)
    if last < first:
        raise ValueError(f"the sequence is empty: last frame {last} is before the first {first}")
    return first, last - first + 1, first - 1
