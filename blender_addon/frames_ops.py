"""One-click operators that put a render job's frames into the compositor or the sequencer (thin: the work is
:mod:`.frames_bpy`'s). They act on the render job picked in the Jobs list (else the newest render of the scene)
and, for a rig, on the scene camera's frames."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import frames_bpy
from .properties import find_job
from .results_bpy import output_root


def render_job_ref(scene: bpy.types.Scene, job_id: str):
    """The saved render job ``job_id``; without an id the one selected in the Jobs list, else the newest render.

    Raises:
        ValueError: when there is no such render job.
    """
    be = scene.nerfart.backend
    if job_id:
        ref = find_job(be, job_id)
    else:
        selected = be.jobs[be.jobs_index] if 0 <= be.jobs_index < len(be.jobs) else None
        renders = [r for r in be.jobs if r.kind == "RENDER" and r.output_dir]
        ref = selected if selected is not None and selected.kind == "RENDER" else (renders[-1] if renders else None)
    if ref is None or ref.kind != "RENDER" or not ref.output_dir:
        raise ValueError("render frames first, or select a render job in the Jobs list")
    return ref


def _frames_of(context, job_id: str):
    ref = render_job_ref(context.scene, job_id)
    return frames_bpy.job_frames(context.scene, output_root(ref.output_dir), f"NeRF-Art {ref.name}")


def _frames_text(frames: frames_bpy.FolderFrames) -> str:
    return f"frames {frames.first}-{frames.last}" if frames.last != frames.first else f"frame {frames.first}"


class _JobFramesOperator:
    job_id: StringProperty(name="Job ID", description="The render job (empty: the one selected in the Jobs list, "
                           "else the newest render)", default="", options={"SKIP_SAVE", "HIDDEN"})

    def _fail(self, text: str) -> set[str]:
        self.report({"ERROR"}, text)
        return {"CANCELLED"}


class NERFART_OT_frames_to_compositor(_JobFramesOperator, bpy.types.Operator):
    """Composite the render job's frames over the render: an Image node (synced to the frames it was rendered
    for) through Alpha Over onto the Render Layers, made once and updated on the next click"""

    bl_idname = "nerfart.frames_to_compositor"
    bl_label = "Frames to Compositor"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    def execute(self, context):
        try:
            frames, img = _frames_of(context, self.job_id)
            frames_bpy.to_compositor(context.scene, img, frames.first, frames.last)
        except (ValueError, OSError, RuntimeError) as exc:
            return self._fail(f"cannot put the frames into the compositor: {exc}")
        self.report({"INFO"}, f"'{img.name}' ({_frames_text(frames)}) is over the render in the compositor "
                    f"(nodes '{frames_bpy.IMAGE_NODE}' and '{frames_bpy.MIX_NODE}')")
        return {"FINISHED"}


class NERFART_OT_frames_to_sequencer(_JobFramesOperator, bpy.types.Operator):
    """Add the render job's frames to the Video Sequencer as one image strip at the frames they were rendered
    for (updated, not duplicated, on the next click)"""

    bl_idname = "nerfart.frames_to_sequencer"
    bl_label = "Frames to Sequencer"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    def execute(self, context):
        try:
            frames, img = _frames_of(context, self.job_id)
            strip = frames_bpy.to_sequencer(context.scene, img, frames)
        except (ValueError, OSError, RuntimeError) as exc:
            return self._fail(f"cannot put the frames into the sequencer: {exc}")
        self.report({"INFO"}, f"strip '{strip.name}' in channel {strip.channel}, {_frames_text(frames)}, from "
                    f"{Path(frames.folder)}")
        return {"FINISHED"}


CLASSES = (
    NERFART_OT_frames_to_compositor,
    NERFART_OT_frames_to_sequencer,
)
