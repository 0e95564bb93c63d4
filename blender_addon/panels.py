"""The sidebar (N panel) tab "NeRF-Art": Backend, Capture, Stylize, Outputs, Jobs.

Panels only draw: everything they show comes from ``Scene.nerfart`` and ``WindowManager.nerfart_runtime``
(which the timer keeps up to date), so drawing never touches a socket and works in every state.
"""

from __future__ import annotations

import bpy

from .core.jobs import describe_error
from .preferences import get_preferences
from .ui_text import draw_wrapped

STATE_ICONS = {"CONNECTED": "LINKED", "CONNECTING": "SORTTIME", "LOST": "ERROR", "ERROR": "CANCEL",
               "DISCONNECTED": "UNLINKED"}
JOB_ICONS = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL", "interrupted": "ERROR",
             "lost": "QUESTION", "running": "PLAY", "queued": "SORTTIME", "submitting": "EXPORT"}


class NERFART_UL_jobs(bpy.types.UIList):
    """This file's backend jobs"""

    bl_idname = "NERFART_UL_jobs"

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.name, icon=JOB_ICONS.get(item.state, "DOT"))
        if item.state == "running":
            row.label(text=f"{item.progress * 100:.0f}%")
        else:
            row.label(text=item.state)


class NERFART_UL_queue(bpy.types.UIList):
    """Prompts waiting in the batch queue"""

    bl_idname = "NERFART_UL_queue"

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "name", text="", emboss=False, icon=JOB_ICONS.get(item.state, "FONT_DATA"))
        row.label(text=item.state or "waiting")


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "NeRF-Art"


ERROR_SUMMARY_LINES = 4  # lines of an error shown before Show Details


def draw_error(layout, rt, context) -> None:
    """The sticky error box: the message's first lines; Show Details adds the rest, the code and what to do."""
    box = layout.box()
    box.alert = True
    row = box.row(align=True)
    row.label(text="Error", icon="ERROR")
    row.operator("nerfart.copy_error", text="", icon="COPYDOWN", emboss=False)
    row.operator("nerfart.clear_error", text="", icon="X", emboss=False)
    draw_error_text(box, rt.error, rt.error_detail, rt, "show_error_detail", context)


def draw_error_text(box, message: str, detail: str, owner, toggle: str, context) -> None:
    """``message`` wrapped (a summary until ``owner.<toggle>`` is set), then ``detail`` when it is."""
    expanded = getattr(owner, toggle)
    cut = draw_wrapped(box, message, context, in_box=True, max_lines=None if expanded else ERROR_SUMMARY_LINES)
    if cut or detail:
        box.prop(owner, toggle, icon="TRIA_DOWN" if expanded else "TRIA_RIGHT", emboss=False)
    if expanded and detail:
        draw_wrapped(box, detail, context, in_box=True)


class NERFART_PT_main(_Panel, bpy.types.Panel):
    """NeRF-Art: connection, progress and errors"""

    bl_idname = "NERFART_PT_main"
    bl_label = "NeRF-Art"

    def draw_header(self, context):
        rt = context.window_manager.nerfart_runtime
        self.layout.label(text="", icon=STATE_ICONS.get(rt.connection, "UNLINKED"))

    def draw(self, context):
        layout = self.layout
        rt = context.window_manager.nerfart_runtime
        col = layout.column()
        col.alert = rt.connection in ("LOST", "ERROR")
        draw_wrapped(col, rt.status_text, context, icon=STATE_ICONS.get(rt.connection, "UNLINKED"))
        if rt.error:
            draw_error(layout, rt, context)
        if rt.busy:
            col = layout.column(align=True)
            col.progress(factor=rt.progress, type="BAR", text=rt.job_text or "working…")
            row = col.row(align=True)
            row.operator("nerfart.cancel_job", text="Cancel", icon="CANCEL")
        if rt.preview is not None:
            layout.template_icon(icon_value=layout.icon(rt.preview), scale=8.0)


class NERFART_PT_backend(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_backend"
    bl_label = "Backend"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        rt = context.window_manager.nerfart_runtime
        prefs = get_preferences(context)
        col = layout.column(align=True)
        if rt.connection == "CONNECTED":
            col.label(text=f"GPU: {rt.gpu_name or 'none'}", icon="MEMORY")
            if rt.gpu_memory:
                col.label(text=f"Memory: {rt.gpu_memory}")
            col.label(text=f"Queue: {rt.queue_length} job(s)")
            if rt.backend_version:
                col.label(text=f"Backend {rt.backend_version}")
        elif rt.connection == "LOST":
            col.alert = True
            col.label(text="The backend is not responding", icon="ERROR")
            col.label(text="Reconnecting by itself; jobs keep running")
            col.label(text="there and reattach when it answers")
        elif rt.connection == "ERROR":
            # Most connection errors are fixed in the preferences (address, keys): one click away.
            op = col.operator("preferences.addon_show", text="Open Add-on Preferences", icon="PREFERENCES")
            op.module = __package__
        row = layout.row(align=True)
        if rt.connection in ("CONNECTED", "CONNECTING", "LOST"):
            row.operator("nerfart.disconnect", icon="UNLINKED")
            if rt.connection == "LOST":
                row.operator("nerfart.connect", text="Retry", icon="FILE_REFRESH")
        else:
            row.operator("nerfart.connect", icon="LINKED")
        if prefs is not None and prefs.start_local:
            row = layout.row(align=True)
            row.operator("nerfart.start_local_backend", text="Start Local", icon="PLAY")
            row.operator("nerfart.stop_local_backend", text="Stop Local", icon="CANCEL")
            if rt.local_backend:
                layout.label(text=f"Local backend: {rt.local_backend.splitlines()[0][:60]}", icon="CONSOLE")
        if rt.reattach_pending:
            box = layout.box()
            box.label(text=f"{rt.reattach_pending} job(s) of this file may still be on the backend", icon="INFO")
            if rt.connection == "CONNECTED":
                box.operator("nerfart.reattach", icon="FILE_REFRESH")
            else:
                box.label(text="Connect to reattach them")


class NERFART_PT_capture(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_capture"
    bl_label = "Capture"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        cap = context.scene.nerfart.capture
        layout.row().prop(cap, "source", expand=True)
        if cap.source == "FOLDER":
            col = layout.column()
            col.prop(cap, "folder", text="")
            col.prop(cap, "format")
            row = col.row(align=True)
            row.prop(cap, "show_photos")
            row.prop(cap, "set_resolution")
            col.operator("nerfart.import_capture", icon="IMPORT")
        else:
            col = layout.column(align=True)
            col.prop(cap, "ring_count")
            col.prop(cap, "ring_elevations")
            col.prop(cap, "ring_margin")
            col.prop(cap, "ring_lens")
            row = col.row(align=True)
            row.prop(cap, "ring_width")
            row.prop(cap, "ring_height")
            col.prop(cap, "ring_samples")
            col.prop(cap, "ring_transparent")
            col.prop(cap, "ring_output", text="")
            layout.operator("nerfart.capture_from_scene", icon="RENDER_STILL")
        col = layout.column(align=True)
        col.prop(cap, "placement")
        col.prop(cap, "cameras")
        layout.separator()
        box = layout.box()
        box.label(text="Reconstruction", icon="MESH_ICOSPHERE")
        col = box.column(align=True)
        col.prop(cap, "preset")
        col.prop(cap, "steps")
        col.prop(cap, "scale")
        col.prop(cap, "background")
        col.prop(cap, "holdout_every")
        col.prop(cap, "transfer")
        box.operator("nerfart.reconstruct", icon="PLAY")
        be = context.scene.nerfart.backend
        if be.reconstruct_job:
            box.label(text=f"Reconstruction: {be.reconstruct_job}", icon="CHECKMARK")


class NERFART_PT_stylize(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_stylize"
    bl_label = "Stylize"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        st = context.scene.nerfart.stylize
        rt = context.window_manager.nerfart_runtime
        layout.operator_menu_enum("nerfart.apply_style_preset", "preset", text="Paper Styles", icon="PRESET")
        col = layout.column(align=True)
        col.prop(st, "prompt", text="")
        col.prop(st, "source_text")
        col.prop(st, "negative_prompts")
        col = layout.column(align=True)
        col.prop(st, "strength", slider=True)
        col.prop(st, "iterations")
        col.prop(st, "colour_only")
        col.prop(st, "clip_model")
        col.prop(st, "clip_pretrained")
        if rt.clip_models:
            col.label(text=f"Available: {rt.clip_models}"[:80])
        col.prop(st, "scale")
        col.prop(st, "preset")
        layout.operator("nerfart.stylize", icon="BRUSH_DATA")
        box = layout.box()
        box.label(text="Batch Queue", icon="SEQ_STRIP_DUPLICATE")
        row = box.row()
        row.template_list("NERFART_UL_queue", "", st, "queue", st, "queue_index", rows=3)
        side = row.column(align=True)
        side.operator("nerfart.queue_add", text="", icon="ADD")
        side.operator("nerfart.queue_remove", text="", icon="REMOVE")
        side.separator()
        side.operator("nerfart.queue_move", text="", icon="TRIA_UP").direction = "UP"
        side.operator("nerfart.queue_move", text="", icon="TRIA_DOWN").direction = "DOWN"
        box.operator("nerfart.queue_run", icon="PLAY")


class NERFART_PT_outputs(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_outputs"
    bl_label = "Outputs"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        out = scene.nerfart.outputs
        layout.prop(scene.nerfart.backend, "render_source")
        layout.row().prop(out, "mode", expand=True)
        col = layout.column(align=True)
        if out.mode == "RIG":
            col.prop(out, "rig")
            col.prop(out, "rig_frames")
        if out.mode == "ACTIVE" or out.rig_frames == "RANGE":
            col.prop(out, "use_scene_range")
            if not out.use_scene_range:
                row = col.row(align=True)
                row.prop(out, "frame_start")
                row.prop(out, "frame_end")
                row.prop(out, "frame_step")
        col = layout.column(align=True)
        col.prop(out, "output_dir", text="")
        col.prop(out, "file_format")
        col.prop(out, "open_sequence")
        layout.operator("nerfart.render", icon="RENDER_ANIMATION")
        box = layout.box()
        box.label(text="Mesh", icon="MESH_DATA")
        col = box.column(align=True)
        col.prop(out, "mesh_resolution")
        col.prop(out, "mesh_decimate", slider=True)
        col.prop(out, "mesh_keep_largest")
        box.operator("nerfart.extract_mesh", icon="MESH_MONKEY")


class NERFART_PT_jobs(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_jobs"
    bl_label = "Jobs"
    bl_parent_id = "NERFART_PT_main"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012 - Blender reads a set

    def draw(self, context):
        layout = self.layout
        be = context.scene.nerfart.backend
        row = layout.row()
        row.template_list("NERFART_UL_jobs", "", be, "jobs", be, "jobs_index", rows=3)
        row.operator("nerfart.job_remove", text="", icon="X")
        if 0 <= be.jobs_index < len(be.jobs):
            ref = be.jobs[be.jobs_index]
            col = layout.column(align=True)
            col.label(text=f"Job {ref.job_id}")
            col.label(text=f"State: {ref.state}" + (f" ({ref.stage})" if ref.stage else ""))
            if ref.state == "running":
                col.progress(factor=ref.progress, type="BAR", text=ref.stage or "running")
                col.operator("nerfart.cancel_job", icon="CANCEL").job_id = ref.job_id
            if ref.state == "interrupted":
                col.operator("nerfart.resume_job", text="Resume from Checkpoint", icon="RECOVER_LAST").job_id = \
                    ref.job_id
            if ref.error:
                box = layout.box()
                box.alert = True
                row = box.row(align=True)
                row.label(text="Why it failed", icon="ERROR")
                row.operator("nerfart.copy_error", text="", icon="COPYDOWN", emboss=False).job_id = ref.job_id
                rt = context.window_manager.nerfart_runtime
                draw_error_text(box, ref.error, describe_error(ref.error_code), rt, "show_job_error", context)
            if ref.output_dir:
                col.prop(ref, "output_dir", text="")


CLASSES = (
    NERFART_UL_jobs,
    NERFART_UL_queue,
    NERFART_PT_main,
    NERFART_PT_backend,
    NERFART_PT_capture,
    NERFART_PT_stylize,
    NERFART_PT_outputs,
    NERFART_PT_jobs,
)
