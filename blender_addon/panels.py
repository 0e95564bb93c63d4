"""The sidebar (N panel) tab "NeRF-Art": Backend, Capture, Stylize, Outputs, Jobs.

Panels only draw: everything they show comes from ``Scene.nerfart`` and ``WindowManager.nerfart_runtime``
(which the timer keeps up to date), so drawing never touches a socket and works in every state.
"""

from __future__ import annotations

import bpy

from .core.advice import queued_settings_text
from .core.jobs import describe_error
from .preferences import get_preferences
from .properties import find_job
from .results_bpy import temporary_output_note
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


def labelled(layout, data, prop: str, text: str = "") -> None:
    """A property under its name: on two lines both fit the narrow sidebar (side by side, Blender gives the
    name a third of the width and cuts it)."""
    col = layout.column(align=True)
    col.label(text=text or data.bl_rna.properties[prop].name)
    col.prop(data, prop, text="")


def draw_result(layout, result: str, warning: str, context, in_box: bool = False) -> None:
    """A job's numbers (PSNR, losses) and, in red, what the artist must know about them."""
    if result:
        draw_wrapped(layout, result, context, in_box=in_box, icon="INFO")
    if warning:
        col = layout.column()
        col.alert = True
        draw_wrapped(col, warning, context, in_box=in_box, icon="ERROR")


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
            draw_wrapped(col, rt.job_text or "working…", context)
            col.progress(factor=rt.progress, type="BAR", text=f"{rt.progress * 100:.0f}%")
            col.operator("nerfart.cancel_job", text="Cancel", icon="CANCEL")
            draw_result(layout, rt.job_result, rt.job_warning, context)
        if rt.batch_text:
            draw_wrapped(layout, rt.batch_text, context, icon="SEQ_STRIP_DUPLICATE")
        if rt.preview is not None:
            layout.template_icon(icon_value=layout.icon(rt.preview), scale=8.0)


class NERFART_PT_backend(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_backend"
    bl_label = "Backend"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        from . import connection
        from .connection import zmq_error

        layout = self.layout
        rt = context.window_manager.nerfart_runtime
        prefs = get_preferences(context)
        if (err := zmq_error()) is not None:
            box = layout.box()
            box.alert = True
            draw_wrapped(box, err, context, in_box=True, icon="ERROR")
        col = layout.column(align=True)
        if rt.connection == "CONNECTED":
            draw_wrapped(col, f"GPU: {rt.gpu_name or 'none'}", context, icon="MEMORY")
            if rt.gpu_memory:
                draw_wrapped(col, f"Memory: {rt.gpu_memory}", context)
            col.label(text=f"Queue: {rt.queue_length} job(s)")
            if rt.backend_version:
                col.label(text=f"Backend {rt.backend_version}")
        elif rt.connection == "LOST":
            col.alert = True
            draw_wrapped(col, connection.lost_explanation(), context, icon="ERROR")
        elif rt.connection == "ERROR":
            # Most connection errors are fixed in the preferences (address, keys): one click away.
            op = col.operator("preferences.addon_show", text="Add-on Preferences", icon="PREFERENCES")
            op.module = __package__
        col = layout.column(align=True)
        if rt.connection in ("CONNECTED", "CONNECTING", "LOST"):
            if rt.connection == "LOST":
                col.operator("nerfart.connect", text="Retry", icon="FILE_REFRESH")
            col.operator("nerfart.disconnect", icon="UNLINKED")
        else:
            col.operator("nerfart.connect", icon="LINKED")
        if prefs is not None and prefs.start_local:
            row = layout.row(align=True)
            row.operator("nerfart.start_local_backend", text="Start", icon="PLAY")
            row.operator("nerfart.stop_local_backend", text="Stop", icon="CANCEL")
            if rt.local_backend:
                draw_wrapped(layout, f"Local backend: {rt.local_backend.splitlines()[0]}", context, icon="CONSOLE")
        if rt.reattach_pending:
            box = layout.box()
            draw_wrapped(box, f"{rt.reattach_pending} job(s) of this file may still be on the backend", context,
                         in_box=True, icon="INFO")
            if rt.connection == "CONNECTED":
                box.operator("nerfart.reattach", icon="FILE_REFRESH")
            else:
                box.label(text="Connect to reattach them")


def draw_capture_warnings(layout, context) -> None:
    """The imported capture's warnings, and whether the scene frames like its photos (live, with the fix)."""
    from .capture_bpy import frame_warning

    cap = context.scene.nerfart.capture
    frame = frame_warning(context.scene, cap.cameras)
    if not cap.warnings and frame is None:
        return
    box = layout.box()
    box.alert = True
    for w in cap.warnings:
        draw_wrapped(box, w.text, context, in_box=True, icon="ERROR")
    if frame is not None:
        draw_wrapped(box, frame, context, in_box=True, icon="ERROR")
        box.operator("nerfart.match_capture_frame", icon="OUTPUT")


SUBJECT_ICONS = {"NONE": "INFO", "DETECTED": "CHECKMARK", "EDITED": "GREASEPENCIL", "ERROR": "ERROR"}


def draw_subject(layout, context) -> None:
    """The capture's subject bounds: detected, edited or none, their shape, and Add / Select / Reset."""
    from .subject_bpy import subject_state

    cap = context.scene.nerfart.capture
    state = subject_state(context.scene)
    box = layout.box()
    box.label(text="Subject", icon="SHADING_BBOX")
    col = box.column()
    col.alert = state.state == "ERROR"
    draw_wrapped(col, state.text, context, in_box=True, icon=SUBJECT_ICONS[state.state])
    if state.state == "NONE":
        box.operator("nerfart.add_subject_bounds", icon="ADD")
        return
    if state.empty is None:  # two empties: the text says which to delete
        return
    box.row().prop(cap, "subject_shape", expand=True)
    col = box.column(align=True)
    col.operator("nerfart.select_subject_bounds", text="Select", icon="RESTRICT_SELECT_OFF")
    col.operator("nerfart.reset_subject_bounds", icon="LOOP_BACK")


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
            labelled(col, cap, "format")
            sub = col.column(align=True)
            sub.prop(cap, "show_photos")
            sub.prop(cap, "set_resolution")
            sub.prop(cap, "set_active_camera")
            labelled(col, cap, "placement_mode")
            row = col.row()
            row.enabled = cap.placement_mode == "CURSOR"  # As Captured keeps the capture's own scale
            row.prop(cap, "subject_size")
            col.operator("nerfart.import_capture", text="Import Capture", icon="IMPORT")
        else:
            col = layout.column(align=True)
            col.prop(cap, "ring_count")
            labelled(col, cap, "ring_elevations")
            col.prop(cap, "ring_margin")
            col.prop(cap, "ring_lens")
            col.prop(cap, "ring_width")
            col.prop(cap, "ring_height")
            col.prop(cap, "ring_samples")
            col.prop(cap, "ring_transparent")
            col.prop(cap, "ring_output", text="")
            layout.operator("nerfart.capture_from_scene", icon="RENDER_STILL")
        draw_capture_warnings(layout, context)
        labelled(layout, cap, "placement")
        labelled(layout, cap, "cameras")
        draw_subject(layout, context)
        layout.separator()
        box = layout.box()
        box.label(text="Reconstruction", icon="MESH_ICOSPHERE")
        col = box.column(align=True)
        col.prop(cap, "preset")
        col.prop(cap, "steps")
        col.prop(cap, "scale")
        col.prop(cap, "holdout_every")
        labelled(box, cap, "background")
        labelled(box, cap, "transfer")
        box.operator("nerfart.reconstruct", icon="PLAY")
        be = context.scene.nerfart.backend
        ref = find_job(be, be.reconstruct_job)
        if be.reconstruct_job:
            box.label(text=f"Done: {be.reconstruct_job}", icon="CHECKMARK")
        if ref is not None:
            draw_result(box, ref.result, ref.warning, context, in_box=True)


class NERFART_PT_stylize(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_stylize"
    bl_label = "Stylize"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        st = context.scene.nerfart.stylize
        rt = context.window_manager.nerfart_runtime
        layout.operator_menu_enum("nerfart.apply_style_preset", "preset", text="Paper Styles", icon="PRESET")
        labelled(layout, st, "prompt")
        labelled(layout, st, "source_text")
        labelled(layout, st, "negative_prompts")
        col = layout.column(align=True)
        col.prop(st, "strength", slider=True)
        col.prop(st, "iterations")
        col.prop(st, "scale")
        col.prop(st, "preset")
        col.prop(st, "colour_only")
        row = col.row(align=True)
        row.enabled = not st.colour_only  # colour_only freezes the geometry: shape freedom has no effect
        row.prop(st, "shape_freedom")
        labelled(layout, st, "clip_model")
        labelled(layout, st, "clip_pretrained")
        if rt.clip_models:
            draw_wrapped(layout, f"Available: {rt.clip_models}", context)
        layout.operator("nerfart.stylize", icon="BRUSH_DATA")
        latest = next((r for r in reversed(context.scene.nerfart.backend.jobs) if r.kind == "STYLIZE"), None)
        if latest is not None and (latest.result or latest.warning):
            box = layout.box()
            draw_wrapped(box, f"Latest: {latest.prompt or latest.name} ({latest.state})", context, in_box=True)
            draw_result(box, latest.result, latest.warning, context, in_box=True)
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
        if 0 <= st.queue_index < len(st.queue):
            item = st.queue[st.queue_index]
            # Each prompt runs with the settings it was added with, not the panel's above: show and edit them.
            sub = box.column(align=True)
            draw_wrapped(sub, f"Runs with its own settings: {queued_settings_text(item)}", context, in_box=True)
            sub.prop(item, "strength", slider=True)
            sub.prop(item, "iterations")
            sub.prop(item, "colour_only")
            labelled(sub, item, "clip_pretrained")
        box.operator("nerfart.queue_run", icon="PLAY")


class NERFART_PT_outputs(_Panel, bpy.types.Panel):
    bl_idname = "NERFART_PT_outputs"
    bl_label = "Outputs"
    bl_parent_id = "NERFART_PT_main"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        out = scene.nerfart.outputs
        be = scene.nerfart.backend
        labelled(layout, be, "render_source")
        if be.render_source == "SELECTED":
            chosen = find_job(be, be.selected_source_job)
            draw_wrapped(layout, f"From: {chosen.name}" if chosen is not None else
                         "Select a finished job in the Jobs list", context)
        layout.row().prop(out, "mode", expand=True)
        col = layout.column(align=True)
        if out.mode == "RIG":
            labelled(col, out, "rig")
            labelled(col, out, "rig_frames")
        if out.mode == "ACTIVE" or out.rig_frames == "RANGE":
            col.prop(out, "use_scene_range")
            if not out.use_scene_range:
                col.prop(out, "frame_start")
                col.prop(out, "frame_end")
                col.prop(out, "frame_step")
        col = layout.column(align=True)
        labelled(col, out, "output_dir")
        labelled(col, out, "file_format")  # "OpenEXR Multilayer" beside its name would be cut
        col.prop(out, "include_background")
        col.prop(out, "open_sequence")
        if note := temporary_output_note(out.output_dir):  # an unsaved file renders into the temporary folder
            box = layout.box()
            box.alert = True
            draw_wrapped(box, note, context, in_box=True, icon="ERROR")
        layout.operator("nerfart.render", icon="RENDER_ANIMATION")
        col = layout.column(align=True)  # the newest (or selected) render's frames, one click each
        col.operator("nerfart.frames_to_compositor", icon="NODE_COMPOSITING")
        col.operator("nerfart.frames_to_sequencer", icon="SEQUENCE")
        box = layout.box()
        box.label(text="Batch", icon="SEQ_STRIP_DUPLICATE")
        draw_wrapped(box, "Every Batch Queue prompt through every rig, one folder each", context, in_box=True)
        labelled(box, out, "batch_rigs")
        box.operator("nerfart.batch_render", icon="RENDER_ANIMATION")
        if out.batch_summary:
            labelled(box, out, "batch_summary")
        box = layout.box()
        box.label(text="Mesh", icon="MESH_DATA")
        col = box.column(align=True)
        labelled(col, out, "mesh_format")  # "Textured (GLB)" beside its name would be cut
        col.prop(out, "mesh_resolution")
        if out.mesh_format == "GLB":
            col.prop(out, "mesh_texture_size")
            col.prop(out, "mesh_target_faces")
        else:
            col.prop(out, "mesh_decimate", slider=True)
        col.prop(out, "mesh_keep_largest")
        col.prop(out, "mesh_show_colours")
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
        if not 0 <= be.jobs_index < len(be.jobs):
            return
        ref = be.jobs[be.jobs_index]
        col = layout.column(align=True)
        draw_wrapped(col, ref.name, context)
        col.label(text=f"Job {ref.job_id}")
        draw_wrapped(col, f"State: {ref.state}" + (f" ({ref.stage})" if ref.stage else ""), context)
        if ref.state == "running":
            col.progress(factor=ref.progress, type="BAR", text=f"{ref.progress * 100:.0f}%")
            col.operator("nerfart.cancel_job", icon="CANCEL").job_id = ref.job_id
        if ref.state == "interrupted":
            col.operator("nerfart.resume_job", text="Resume", icon="RECOVER_LAST").job_id = ref.job_id
        draw_result(layout, ref.result, ref.warning, context)
        if ref.error:
            box = layout.box()
            box.alert = True
            row = box.row(align=True)
            row.label(text="Why it failed", icon="ERROR")
            row.operator("nerfart.copy_error", text="", icon="COPYDOWN", emboss=False).job_id = ref.job_id
            rt = context.window_manager.nerfart_runtime
            draw_error_text(box, ref.error, describe_error(ref.error_code), rt, "show_job_error", context)
        if ref.output_dir:
            col = layout.column(align=True)
            col.prop(ref, "output_dir", text="")
            if ref.kind == "RENDER":
                col.operator("nerfart.load_frames", icon="IMAGE_DATA").job_id = ref.job_id
                col.operator("nerfart.frames_to_compositor", icon="NODE_COMPOSITING").job_id = ref.job_id
                col.operator("nerfart.frames_to_sequencer", icon="SEQUENCE").job_id = ref.job_id


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
