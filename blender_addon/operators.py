"""Operators. Each one reads its settings, calls one function of the core / bpy helper modules, and reports.

Networked operators never wait in the UI: they send and return; the timer (:mod:`.tick`) applies the answers.
In background mode (``blender -b``) the same operators block until their job finishes, printing progress, and
report errors, which makes ``bpy.ops.nerfart.*`` raise in a script (use ``--python-exit-code 1``).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from types import SimpleNamespace

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import connection, tick
from .core.jobs import JobState
from .core.local_backend import DEFAULT_ARGS
from .core.presets import PRESETS_BY_ID, preset_enum_items
from .core.results import result_warning
from .preferences import DEFAULT_ENDPOINT, connect_options, get_preferences, is_loopback
from .properties import find_job

CONNECTED_STATES = ("CONNECTED",)
# Seconds to wait in background mode for a started local backend's first answer (it imports torch first);
# connection.poll itself calls a silent starting backend lost after 60 s.
LOCAL_START_TIMEOUT_S = 65.0


def _prefs(context):
    """The add-on preferences, or their defaults when registered outside the preferences system (scripts)."""
    prefs = get_preferences(context)
    if prefs is None:
        return SimpleNamespace(endpoint=DEFAULT_ENDPOINT, hmac_key="", timeout_s=4.0, start_local=False,
                               python_path="", work_dir="", backend_args=DEFAULT_ARGS)
    return prefs


def _fail(op, text: str, detail: str | None = "") -> set[str]:
    """Report an error to the user (info bar + panel) and cancel.

    ``detail`` None keeps the details the session already holds for this error (e.g. the backend's field).
    """
    connection.session.set_error(text, connection.session.last_error_detail if detail is None else detail)
    tick.sync_runtime(bpy.context.window_manager)
    op.report({"ERROR"}, text)
    return {"CANCELLED"}


def _require_connection(cls) -> bool:
    if connection.session.state not in CONNECTED_STATES:
        cls.poll_message_set("Connect to a backend first (NeRF-Art ▸ Backend ▸ Connect)")
        return False
    return True


def _client_name() -> str:
    return f"blender {bpy.app.version_string} / nerfart_blender"


def _submit(op, context, job: JobState, inputs=None) -> set[str]:
    """Send ``job``; in background mode wait for it. Returns the operator result."""
    try:
        connection.submit(job, inputs)
    except ValueError as exc:
        return _fail(op, str(exc))
    connection.session.clear_error()
    if bpy.app.background:
        try:
            tick.run_blocking(job)
        except RuntimeError as exc:
            return _fail(op, str(exc), detail=None)
        op.report({"INFO"}, job.status_line())
        if warning := result_warning(job):  # e.g. a tiny mesh: why, and what to change
            op.report({"WARNING"}, warning)
        return {"FINISHED"}
    tick.sync_runtime(context.window_manager)
    if context.window is not None and not NERFART_OT_watch_jobs.running:
        bpy.ops.nerfart.watch_jobs("INVOKE_DEFAULT")
    op.report({"INFO"}, f"{job.label}: sent")
    return {"FINISHED"}


# ---------------------------------------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------------------------------------


class NERFART_OT_connect(bpy.types.Operator):
    """Connect to the backend set in the add-on preferences and show its GPU and queue"""

    bl_idname = "nerfart.connect"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context):
        if connection.session.state in ("CONNECTED", "CONNECTING"):
            cls.poll_message_set("Already connected")
            return False
        return True

    def execute(self, context):
        prefs = _prefs(context)
        if not is_loopback(prefs.endpoint) and not bpy.app.online_access:
            return _fail(self, f"{prefs.endpoint} is not on this machine and Blender's Online Access is off; "
                         "allow it in Preferences ▸ System ▸ Network, or use an SSH tunnel to a local port")
        try:
            connection.connect(prefs.endpoint, prefs.hmac_key, _client_name(), prefs.timeout_s,
                               **connect_options(prefs))
        except ValueError as exc:
            return _fail(self, str(exc))
        connection.session.clear_error()
        if bpy.app.background:
            try:
                tick.wait_connected(prefs.timeout_s + 1.0)
            except RuntimeError as exc:
                return _fail(self, str(exc))
            self.report({"INFO"}, connection.session.status_line())
        tick.sync_runtime(context.window_manager)
        return {"FINISHED"}


class NERFART_OT_disconnect(bpy.types.Operator):
    """Close the connection; jobs keep running on the backend and reattach when you connect again"""

    bl_idname = "nerfart.disconnect"
    bl_label = "Disconnect"

    @classmethod
    def poll(cls, context):
        if connection.client() is None:
            cls.poll_message_set("Not connected")
            return False
        return True

    def execute(self, context):
        connection.disconnect()
        tick.sync_runtime(context.window_manager)
        return {"FINISHED"}


class NERFART_OT_test_connection(bpy.types.Operator):
    """Check that a backend answers at the address above (the result shows below the button)"""

    bl_idname = "nerfart.test_connection"
    bl_label = "Test Connection"

    def execute(self, context):
        if connection.session.state == "CONNECTED":
            self.report({"INFO"}, connection.session.status_line())
            return {"FINISHED"}
        connection.disconnect()
        return NERFART_OT_connect.execute(self, context)


class NERFART_OT_start_local_backend(bpy.types.Operator):
    """Start the backend on this machine with the Python set in the preferences, then connect to it"""

    bl_idname = "nerfart.start_local_backend"
    bl_label = "Start Local Backend"

    @classmethod
    def poll(cls, context):
        if connection.local_backend.running:
            cls.poll_message_set("The local backend is already running")
            return False
        prefs = get_preferences(context)
        if prefs is None or not prefs.start_local or not prefs.python_path:
            cls.poll_message_set("Enable 'Start a Local Backend' and set its Python in the add-on preferences")
            return False
        return True

    def execute(self, context):
        from .core.local_backend import build_command

        prefs = _prefs(context)
        if not is_loopback(prefs.endpoint):
            return _fail(self, f"a local backend must listen on this machine, but the address is {prefs.endpoint}; "
                         "use tcp://127.0.0.1:PORT")
        try:
            cmd = build_command(bpy.path.abspath(prefs.python_path), prefs.backend_args, prefs.endpoint)
            connection.local_backend.start(cmd, bpy.path.abspath(prefs.work_dir) or None, _log_path())
        except ValueError as exc:
            return _fail(self, str(exc))
        self.report({"INFO"}, f"local backend started (pid {connection.local_backend.proc.pid}); connecting")
        connection.session.clear_error()
        if connection.client() is None:
            try:
                connection.connect(prefs.endpoint, prefs.hmac_key, _client_name(), prefs.timeout_s,
                                   **connect_options(prefs))
            except ValueError as exc:
                return _fail(self, str(exc))
        if bpy.app.background:
            # Like Connect: block until the new backend answers, so that the next operator of a script finds
            # it connected.
            try:
                tick.wait_connected(LOCAL_START_TIMEOUT_S)
            except RuntimeError as exc:
                tail = connection.local_backend.log_tail(8)
                return _fail(self, str(exc) + (f"; backend output:\n{tail}" if tail else ""))
            self.report({"INFO"}, connection.session.status_line())
        tick.sync_runtime(context.window_manager)
        return {"FINISHED"}


def _log_path() -> Path:
    try:
        base = Path(bpy.utils.extension_path_user(__package__, path="logs", create=True))
    except (ValueError, AttributeError):  # not installed as an extension (development checkout)
        import tempfile

        base = Path(tempfile.gettempdir()) / "nerfart_logs"
    return base / "local_backend.log"


class NERFART_OT_stop_local_backend(bpy.types.Operator):
    """Stop the local backend process (frees its GPU memory; running jobs are interrupted)"""

    bl_idname = "nerfart.stop_local_backend"
    bl_label = "Stop Local Backend"

    @classmethod
    def poll(cls, context):
        if not connection.local_backend.running:
            cls.poll_message_set("No local backend started by this Blender is running")
            return False
        return True

    def execute(self, context):
        connection.local_backend.stop()
        self.report({"INFO"}, "stopping the local backend")
        tick.sync_runtime(context.window_manager)
        return {"FINISHED"}


class NERFART_OT_reattach(bpy.types.Operator):
    """Ask the backend about this file's unfinished jobs and follow them again"""

    bl_idname = "nerfart.reattach"
    bl_label = "Reattach Jobs"

    @classmethod
    def poll(cls, context):
        return _require_connection(cls)

    def execute(self, context):
        n = tick.reattach_saved_jobs()
        self.report({"INFO"}, f"reattaching {n} job(s)" if n else "no unfinished jobs to reattach")
        return {"FINISHED"}


class NERFART_OT_clear_error(bpy.types.Operator):
    """Dismiss the error message"""

    bl_idname = "nerfart.clear_error"
    bl_label = "Dismiss"

    def execute(self, context):
        connection.session.clear_error()
        rt = context.window_manager.nerfart_runtime
        rt.error = rt.error_detail = ""
        return {"FINISHED"}


class NERFART_OT_copy_error(bpy.types.Operator):
    """Copy the whole error message, its code and what to do to the clipboard (to paste into a report)"""

    bl_idname = "nerfart.copy_error"
    bl_label = "Copy Error"

    job_id: StringProperty(name="Job ID", description="Copy this job's error (empty: the error in the panel)",
                           default="", options={"SKIP_SAVE", "HIDDEN"})

    def execute(self, context):
        from .core.jobs import describe_error

        if self.job_id:
            ref = find_job(context.scene.nerfart.backend, self.job_id)
            if ref is None or not ref.error:
                self.report({"WARNING"}, f"job {self.job_id} has no error")
                return {"CANCELLED"}
            text = "\n\n".join(t for t in (f"{ref.name}: {ref.error}", describe_error(ref.error_code)) if t)
        else:
            rt = context.window_manager.nerfart_runtime
            text = "\n\n".join(t for t in (rt.error, rt.error_detail) if t)
        context.window_manager.clipboard = text
        self.report({"INFO"}, "copied the error to the clipboard")
        return {"FINISHED"}


def cancel_question(job: JobState | None) -> str | None:
    """What to ask before cancelling ``job`` from the UI, or None to cancel at once.

    Training jobs (reconstruct, stylize) can run for an hour: one stray click must not end them. Renders and
    meshes keep every frame they wrote, so they stop without a question.
    """
    if job is None or job.kind not in ("reconstruct", "stylize"):
        return None
    where = f" at {job.stage} {job.step}/{job.total}" if job.total else ""
    return (f"Stop {job.label or job.kind}{where}? The model trained so far is kept, but the job cannot "
            "continue from there.")


class NERFART_OT_cancel_job(bpy.types.Operator):
    """Cancel the job (it stops at its next step; what it produced so far is kept). Training jobs ask first"""

    bl_idname = "nerfart.cancel_job"
    bl_label = "Cancel Job"

    job_id: StringProperty(name="Job ID", description="Job to cancel (empty: the job in the progress bar)",
                           default="", options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        if not _require_connection(cls):
            return False
        if connection.session.current_job() is None:
            cls.poll_message_set("No job is running")
            return False
        return True

    def _job(self) -> JobState | None:
        if self.job_id:
            return connection.session.jobs.get(self.job_id)
        return connection.session.current_job()

    def invoke(self, context, event):
        question = cancel_question(self._job())
        if question is None:
            return self.execute(context)
        return context.window_manager.invoke_confirm(self, event, title="Cancel Job?", message=question,
                                                     confirm_text="Cancel Job", icon="WARNING")

    def execute(self, context):
        job = self._job()
        job_id = self.job_id or ((job.job_id or "") if job is not None else "")
        if not job_id:
            return _fail(self, "the job has not been accepted yet; try again in a moment")
        try:
            connection.cancel(job_id)
        except ValueError as exc:
            return _fail(self, str(exc))
        self.report({"INFO"}, f"cancelling job {job_id}")
        return {"FINISHED"}


class NERFART_OT_resume_job(bpy.types.Operator):
    """Resume an interrupted job from its latest checkpoint (it was running when the backend stopped)"""

    bl_idname = "nerfart.resume_job"
    bl_label = "Resume Job"

    job_id: StringProperty(name="Job ID", description="The interrupted job to resume", default="",
                           options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        return _require_connection(cls)

    def execute(self, context):
        if not self.job_id:
            return _fail(self, "no job given")
        try:
            connection.resume(self.job_id)
        except ValueError as exc:
            return _fail(self, str(exc))
        tick.sync_runtime(context.window_manager)
        self.report({"INFO"}, f"resuming job {self.job_id} from its latest checkpoint")
        return {"FINISHED"}


class NERFART_OT_watch_jobs(bpy.types.Operator):
    """Watch running jobs and report the ones that finish.

    It passes every event on: Esc belongs to whatever the artist is doing in the viewport (a transform, a
    menu), so it must never cancel an hour of training; the Cancel button in the panel does, after asking.
    """

    bl_idname = "nerfart.watch_jobs"
    bl_label = "Watch NeRF-Art Jobs"
    bl_options = {"INTERNAL"}  # noqa: RUF012 - Blender reads a set

    running = False

    def invoke(self, context, event):
        if NERFART_OT_watch_jobs.running:
            return {"CANCELLED"}
        NERFART_OT_watch_jobs.running = True
        self._seen_final: set[str] = set()
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        s = connection.session
        for job in s.jobs.values():
            if job.job_id and not job.active and job.job_id not in self._seen_final:
                self._seen_final.add(job.job_id)
                level = "INFO" if job.state == "done" else ("WARNING" if job.state == "cancelled" else "ERROR")
                self.report({level}, job.status_line())
                if warning := result_warning(job):
                    self.report({"WARNING"}, warning)
        from . import batch_bpy

        while batch_bpy.done_reports:  # a batch ended: how it went and where its outputs are
            level, text = batch_bpy.done_reports.pop(0)
            self.report({level}, text)
        if not s.busy:
            NERFART_OT_watch_jobs.running = False
            return {"FINISHED"}
        return {"PASS_THROUGH"}

    def cancel(self, context):
        NERFART_OT_watch_jobs.running = False


# ---------------------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------------------


class NERFART_OT_import_capture(bpy.types.Operator):
    """Import the capture's cameras into a new collection under one placement empty"""

    bl_idname = "nerfart.import_capture"
    bl_label = "Import Capture Cameras"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        if not context.scene.nerfart.capture.folder:
            cls.poll_message_set("Choose a capture folder first")
            return False
        return True

    def execute(self, context):
        from .capture_bpy import frame_warning, import_capture, store_warnings
        from .core.captures import CaptureError, read_capture
        from .jobs_bpy import CAPTURE_FORMATS

        scene = context.scene
        cap = scene.nerfart.capture
        folder = bpy.path.abspath(cap.folder)
        try:
            capture = read_capture(folder, CAPTURE_FORMATS.get(cap.format))
            coll, placement, warnings = import_capture(scene, capture, cap.show_photos, cap.set_resolution,
                                                       cap.set_active_camera, cap.placement_mode,
                                                       cap.subject_size)
        except (CaptureError, ValueError, OSError) as exc:
            return _fail(self, f"cannot import the capture: {exc}")
        cap.cameras = coll
        cap.placement = placement
        store_warnings(cap, warnings)  # the panel shows them (and frame_warning, which follows the scene)
        for obj in context.view_layer.objects:
            obj.select_set(False)
        placement.select_set(True)
        context.view_layer.objects.active = placement
        for w in [*warnings, *filter(None, [frame_warning(scene, coll)])]:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"imported {len(capture.cameras)} {capture.format} cameras into '{coll.name}'; "
                    f"move '{placement.name}' to place the capture")
        return {"FINISHED"}


class NERFART_OT_match_capture_frame(bpy.types.Operator):
    """Set the scene's render resolution and pixel aspect to the capture's photos, so its cameras frame exactly like them"""

    bl_idname = "nerfart.match_capture_frame"
    bl_label = "Match Photo Size"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        from .capture_bpy import frame_warning

        if frame_warning(context.scene, context.scene.nerfart.capture.cameras) is None:
            cls.poll_message_set("The scene already frames like the imported capture's photos")
            return False
        return True

    def execute(self, context):
        from .capture_bpy import match_scene_to_capture

        width, height = match_scene_to_capture(context.scene, context.scene.nerfart.capture.cameras)
        self.report({"INFO"}, f"the scene now renders {width}x{height}, the capture's photo size")
        return {"FINISHED"}


class NERFART_OT_capture_from_scene(bpy.types.Operator):
    """Render the selected objects from a ring of cameras with Cycles and use the images as the capture (Esc cancels)"""

    bl_idname = "nerfart.capture_from_scene"
    bl_label = "Capture from Scene"

    @classmethod
    def poll(cls, context):
        if not context.selected_objects:
            cls.poll_message_set("Select the objects to capture")
            return False
        if not hasattr(context.scene, "cycles"):
            cls.poll_message_set("Cycles is not available in this Blender")
            return False
        return True

    def _prepare(self, context):
        from .capture_bpy import RenderSettingsGuard, create_ring, ring_cameras_of
        from .core.ring import parse_elevations
        from .results_bpy import output_root

        scene = context.scene
        cap = scene.nerfart.capture
        cap.warnings.clear()  # a new capture: the imported one's warnings no longer apply
        elevations = parse_elevations(cap.ring_elevations)
        coll, _ring = create_ring(scene, list(context.selected_objects), cap.ring_count, elevations, cap.ring_lens,
                                  cap.ring_width, cap.ring_height, cap.ring_margin)
        self._coll = coll
        self._cameras = ring_cameras_of(coll)
        self._guard = RenderSettingsGuard(scene)
        self._guard.apply(cap.ring_width, cap.ring_height, cap.ring_samples, cap.ring_transparent)
        self._out = output_root(cap.ring_output or "//nerfart/capture/")
        self._out.mkdir(parents=True, exist_ok=True)
        self._index = 0
        placement = next(o for o in coll.objects if o.type == "EMPTY")
        cap.cameras = coll
        cap.placement = placement

    def _finish(self, context) -> None:
        from .capture_bpy import write_ring_transforms

        scene = context.scene
        write_ring_transforms(scene, self._cameras, self._out)
        self._guard.restore()
        cap = scene.nerfart.capture
        cap.folder = str(self._out)
        cap.format = "TRANSFORMS_JSON"
        self.report({"INFO"}, f"captured {len(self._cameras)} views into {self._out}")

    def _step(self, context) -> bool:
        from .capture_bpy import render_ring_view

        cam = self._cameras[self._index]
        render_ring_view(context.scene, cam, self._out)
        self._index += 1
        return self._index >= len(self._cameras)

    def execute(self, context):  # blocking: scripts and background mode
        try:
            self._prepare(context)
            for i in range(len(self._cameras)):
                self._step(context)
                print(f"[nerfart] capture view {i + 1}/{len(self._cameras)}", flush=True)
            self._finish(context)
        except (ValueError, RuntimeError, OSError) as exc:
            if hasattr(self, "_guard"):
                self._guard.restore()
            return _fail(self, f"scene capture failed: {exc}", traceback.format_exc())
        return {"FINISHED"}

    def invoke(self, context, event):
        try:
            self._prepare(context)
        except (ValueError, RuntimeError, OSError) as exc:
            return _fail(self, f"scene capture failed: {exc}")
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.01, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, len(self._cameras))
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        wm = context.window_manager
        if event.type == "ESC":
            self._end(context)
            self.report({"WARNING"}, f"scene capture cancelled after {self._index} of {len(self._cameras)} views")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            done = self._step(context)
        except (RuntimeError, OSError) as exc:
            self._end(context)
            return _fail(self, f"scene capture failed: {exc}")
        wm.progress_update(self._index)
        context.workspace.status_text_set(f"NeRF-Art: capturing view {self._index}/{len(self._cameras)} (Esc "
                                          "cancels)")
        if done:
            self._end(context, restore=False)
            self._finish(context)
            return {"FINISHED"}
        return {"RUNNING_MODAL"}

    def _end(self, context, restore: bool = True) -> None:
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        context.workspace.status_text_set(None)
        if restore:
            self._guard.restore()


# ---------------------------------------------------------------------------------------------------------
# Subject bounds
# ---------------------------------------------------------------------------------------------------------


def _subject_or_none(context):
    """The capture's subject bounds empty, or None (also when there are two: the panel says so)."""
    from .subject_bpy import find_subject

    try:
        return find_subject(context.scene)
    except ValueError:
        return None


class NERFART_OT_add_subject_bounds(bpy.types.Operator):
    """Add a box around the captured head and shoulders, where the capture's cameras look: every job then keeps
    what lies inside as the subject and treats the rest as background"""

    bl_idname = "nerfart.add_subject_bounds"
    bl_label = "Add Subject Bounds"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        cap = context.scene.nerfart.capture
        if cap.cameras is None and cap.placement is None:
            cls.poll_message_set("Import or capture the capture first: the box goes where its cameras look")
            return False
        if _subject_or_none(context) is not None:
            cls.poll_message_set("The capture has subject bounds already")
            return False
        return True

    def execute(self, context):
        from .subject_bpy import add_default

        try:
            empty = add_default(context.scene)
        except (ValueError, OSError) as exc:
            return _fail(self, f"cannot add subject bounds: {exc}")
        _select_only(context, empty)
        self.report({"INFO"}, f"added '{empty.name}': move and scale it to fit the head and shoulders")
        return {"FINISHED"}


def _select_only(context, obj) -> None:
    for other in context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


class NERFART_OT_select_subject_bounds(bpy.types.Operator):
    """Select the subject bounds (and make them active) to move, rotate or scale them in the viewport"""

    bl_idname = "nerfart.select_subject_bounds"
    bl_label = "Select Subject Bounds"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        if _subject_or_none(context) is None:
            cls.poll_message_set("The capture has no subject bounds")
            return False
        return True

    def execute(self, context):
        empty = _subject_or_none(context)
        if empty is None or empty.name not in context.view_layer.objects:
            return _fail(self, "the subject bounds are not in this view layer")
        try:
            _select_only(context, empty)
        except RuntimeError as exc:  # hidden or in a disabled collection
            return _fail(self, f"cannot select '{empty.name}': {exc}")
        return {"FINISHED"}


class NERFART_OT_reset_subject_bounds(bpy.types.Operator):
    """Put the subject bounds back where the last reconstruction found them (your changes to them are undone)"""

    bl_idname = "nerfart.reset_subject_bounds"
    bl_label = "Reset to Detected"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        from .subject_bpy import subject_state

        state = subject_state(context.scene)
        if state.empty is None:
            cls.poll_message_set("The capture has no subject bounds")
            return False
        if not state.can_reset:
            cls.poll_message_set("The subject bounds are the detected ones" if state.state == "DETECTED" else
                                 "No reconstruction has reported subject bounds yet")
            return False
        return True

    def execute(self, context):
        from .subject_bpy import reset_to_detected

        try:
            empty = reset_to_detected(context.scene)
        except ValueError as exc:
            return _fail(self, f"cannot reset the subject bounds: {exc}")
        self.report({"INFO"}, f"'{empty.name}' are the detected subject bounds again")
        return {"FINISHED"}


# ---------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------


class NERFART_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a NeRF from the capture on the backend (the folder path is passed to a local backend, the
    capture is uploaded to a remote one)"""

    bl_idname = "nerfart.reconstruct"
    bl_label = "Reconstruct"

    @classmethod
    def poll(cls, context):
        if not _require_connection(cls):
            return False
        cap = context.scene.nerfart.capture
        if not cap.folder and cap.cameras is None:
            cls.poll_message_set("Choose a capture folder or capture the scene first")
            return False
        return True

    def execute(self, context):
        from .jobs_bpy import reconstruct_job

        limits = (connection.session.info.get("limits") or {})
        try:
            job, inputs = reconstruct_job(context.scene, connection.session.endpoint,
                                          limits.get("max_message_bytes"))
        except (ValueError, OSError) as exc:
            return _fail(self, str(exc))
        return _submit(self, context, job, inputs)


class NERFART_OT_stylize(bpy.types.Operator):
    """Stylize the reconstruction with the prompt above"""

    bl_idname = "nerfart.stylize"
    bl_label = "Stylize"

    @classmethod
    def poll(cls, context):
        if not _require_connection(cls):
            return False
        if not context.scene.nerfart.backend.reconstruct_job:
            cls.poll_message_set("Reconstruct the capture first")
            return False
        return True

    def execute(self, context):
        from .jobs_bpy import stylize_job

        try:
            job = stylize_job(context.scene)
        except ValueError as exc:
            return _fail(self, str(exc))
        return _submit(self, context, job)


class NERFART_OT_apply_style_preset(bpy.types.Operator):
    """Fill in the prompt and settings of one of the NeRF-Art paper's styles"""

    bl_idname = "nerfart.apply_style_preset"
    bl_label = "Style Preset"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set
    bl_property = "preset"

    preset: EnumProperty(name="Preset", description="Style to fill in", items=preset_enum_items())

    def execute(self, context):
        p = PRESETS_BY_ID[self.preset]
        st = context.scene.nerfart.stylize
        st.prompt = p.prompt
        st.source_text = p.source_text
        st.negative_prompts = p.negative_prompts
        st.strength = p.strength
        st.colour_only = p.colour_only
        st.shape_freedom = p.shape_freedom
        return {"FINISHED"}


class NERFART_OT_queue_add(bpy.types.Operator):
    """Add the current prompt and settings to the batch queue"""

    bl_idname = "nerfart.queue_add"
    bl_label = "Add to Queue"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        if not context.scene.nerfart.stylize.prompt.strip():
            cls.poll_message_set("Write a prompt first")
            return False
        return True

    def execute(self, context):
        st = context.scene.nerfart.stylize
        item = st.queue.add()
        item.name = st.prompt.strip()
        for key in ("source_text", "negative_prompts", "strength", "iterations", "colour_only", "shape_freedom",
                    "clip_model", "clip_pretrained"):
            setattr(item, key, getattr(st, key))
        st.queue_index = len(st.queue) - 1
        return {"FINISHED"}


class NERFART_OT_queue_remove(bpy.types.Operator):
    """Remove the selected prompt from the batch queue"""

    bl_idname = "nerfart.queue_remove"
    bl_label = "Remove from Queue"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    @classmethod
    def poll(cls, context):
        st = context.scene.nerfart.stylize
        if not 0 <= st.queue_index < len(st.queue):
            cls.poll_message_set("Select a queued prompt")
            return False
        return True

    def execute(self, context):
        st = context.scene.nerfart.stylize
        st.queue.remove(st.queue_index)
        st.queue_index = min(st.queue_index, max(0, len(st.queue) - 1))
        return {"FINISHED"}


class NERFART_OT_queue_move(bpy.types.Operator):
    """Move the selected prompt up or down the queue"""

    bl_idname = "nerfart.queue_move"
    bl_label = "Move in Queue"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    direction: EnumProperty(name="Direction", description="Where to move it",
                            items=[("UP", "Up", "Run earlier"), ("DOWN", "Down", "Run later")], default="UP")

    @classmethod
    def poll(cls, context):
        st = context.scene.nerfart.stylize
        if len(st.queue) < 2:
            cls.poll_message_set("The queue needs two prompts to reorder")
            return False
        return True

    def execute(self, context):
        st = context.scene.nerfart.stylize
        i = st.queue_index
        j = i - 1 if self.direction == "UP" else i + 1
        if 0 <= j < len(st.queue):
            st.queue.move(i, j)
            st.queue_index = j
        return {"FINISHED"}


class NERFART_OT_queue_run(bpy.types.Operator):
    """Stylize every queued prompt that has not run yet (the backend runs them one after another)"""

    bl_idname = "nerfart.queue_run"
    bl_label = "Run Queue"

    @classmethod
    def poll(cls, context):
        if not _require_connection(cls):
            return False
        scene = context.scene
        if not scene.nerfart.backend.reconstruct_job:
            cls.poll_message_set("Reconstruct the capture first")
            return False
        if not any(not q.job_id or q.state in ("failed", "cancelled", "interrupted", "lost")
                   for q in scene.nerfart.stylize.queue):
            cls.poll_message_set("No queued prompt is waiting to run")
            return False
        return True

    def execute(self, context):
        from .jobs_bpy import stylize_job

        scene = context.scene
        jobs = []
        for i, item in enumerate(scene.nerfart.stylize.queue):
            if item.job_id and item.state not in ("failed", "cancelled", "interrupted", "lost"):
                continue
            try:
                job = stylize_job(scene, item, i)
                connection.submit(job)
            except ValueError as exc:
                return _fail(self, f"queued prompt {i + 1}: {exc}")
            item.state = "submitting"
            jobs.append(job)
        if bpy.app.background:
            failed = []
            for job in jobs:
                try:
                    tick.run_blocking(job)
                except RuntimeError as exc:
                    failed.append(str(exc))
            if failed:
                return _fail(self, "; ".join(failed), detail=None)
        elif context.window is not None and not NERFART_OT_watch_jobs.running:
            bpy.ops.nerfart.watch_jobs("INVOKE_DEFAULT")
        self.report({"INFO"}, f"queued {len(jobs)} stylization(s)")
        return {"FINISHED"}


OVERWRITE_HINT = ("change the frame range, rig or output folder, or render again and confirm replacing them (a "
                  "script: overwrite=True)")


class NERFART_OT_render(bpy.types.Operator):
    """Render the active camera over the frame range (or every rig camera) with the backend, into a folder named
    after the prompt, rig and frames; asks before replacing an earlier render"""

    bl_idname = "nerfart.render"
    bl_label = "Render Frames"

    overwrite: BoolProperty(name="Overwrite", description="Replace the frames of an earlier render of the same "
                            "prompt, cameras and frames (without it, a render into a full folder is refused)",
                            default=False, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        if not _require_connection(cls):
            return False
        if any(j.kind == "render" and j.meta.get("scene") == context.scene.name
               for j in connection.session.active_jobs()):
            cls.poll_message_set("A render of this scene is running: wait for it, or cancel it (NeRF-Art panel)")
            return False
        out = context.scene.nerfart.outputs
        if out.mode == "RIG" and out.rig is None:
            cls.poll_message_set("Choose the rig collection")
            return False
        return True

    def invoke(self, context, event):
        from .jobs_bpy import earlier_render, render_target

        try:
            earlier = earlier_render(render_target(context.scene).folder)
        except ValueError as exc:
            return _fail(self, f"cannot render: {exc}")
        if earlier is None or self.overwrite:
            return self.execute(context)
        self.overwrite = True  # what the confirmation means
        return context.window_manager.invoke_confirm(self, event, title="Replace Earlier Render?",
                                                     message=f"{earlier}. Replace them?", confirm_text="Replace",
                                                     icon="WARNING")

    def execute(self, context):
        from .core.outputs import remove_frames
        from .jobs_bpy import earlier_render, folder_in_use, render_job, render_target
        from .results_bpy import temporary_output_note

        try:
            target = render_target(context.scene)
            if (writer := folder_in_use(target.folder)) is not None:
                return _fail(self, f"not rendering: {writer} is still writing into {target.folder}; wait for it "
                             "or cancel it")
            earlier = earlier_render(target.folder)
            if earlier is not None and not self.overwrite:
                return _fail(self, f"not rendering: {earlier}; {OVERWRITE_HINT}")
            remove_frames(target.folder)
            job = render_job(context.scene, target)
        except (ValueError, OSError) as exc:
            return _fail(self, f"cannot render: {exc}")
        result = _submit(self, context, job)
        if result == {"FINISHED"} and (note := temporary_output_note(context.scene.nerfart.outputs.output_dir)):
            self.report({"WARNING"}, f"{note} (this render: {target.folder})")
        return result


class NERFART_OT_batch_render(bpy.types.Operator):
    """Stylize every prompt of the Batch Queue and render each through every camera rig of the Rigs collection,
    one folder per prompt and rig, with a summary; asks before replacing earlier renders"""

    bl_idname = "nerfart.batch_render"
    bl_label = "Render Batch"

    prompts: StringProperty(name="Prompts", description="Prompts, one per line or separated by '|' (empty: the "
                            "Batch Queue's)", default="", options={"SKIP_SAVE"})
    rigs: StringProperty(name="Rigs", description="Names of the rig collections, separated by commas (empty: "
                         "the rigs in Outputs ▸ Batch ▸ Rigs)", default="", options={"SKIP_SAVE"})
    overwrite: BoolProperty(name="Overwrite", description="Replace the frames of earlier renders of the same "
                            "prompt, rig and frames (without it, a batch that would replace any is refused)",
                            default=False, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        from . import batch_bpy

        if not _require_connection(cls):
            return False
        if batch_bpy.running_in(context.scene.name):
            cls.poll_message_set("A batch of this scene is running: wait for it, or cancel its jobs")
            return False
        return True

    def _plan(self, context):
        from . import batch_bpy
        from .core.batch import parse_names, parse_prompts

        scene = context.scene
        prompts = batch_bpy.prompts_of(scene, parse_prompts(self.prompts))
        rigs = batch_bpy.rigs_of(scene, parse_names(self.rigs))
        return batch_bpy.plan(scene, prompts, rigs)

    def invoke(self, context, event):
        from . import batch_bpy

        try:
            earlier = batch_bpy.earlier_renders(self._plan(context))
        except ValueError as exc:
            return _fail(self, f"cannot render the batch: {exc}")
        if not earlier or self.overwrite:
            return self.execute(context)
        self.overwrite = True  # what the confirmation means
        more = f" (and {len(earlier) - 1} more folder(s))" if len(earlier) > 1 else ""
        return context.window_manager.invoke_confirm(self, event, title="Replace Earlier Renders?",
                                                     message=f"{earlier[0]}{more}. Replace them?",
                                                     confirm_text="Replace", icon="WARNING")

    def execute(self, context):
        from . import batch_bpy

        try:
            batch = self._plan(context)
        except ValueError as exc:
            return _fail(self, f"cannot render the batch: {exc}")
        if busy := batch_bpy.busy_folders(batch):
            return _fail(self, f"not rendering the batch: {busy[0]}; wait for it or cancel it")
        earlier = batch_bpy.earlier_renders(batch)
        if earlier and not self.overwrite:
            return _fail(self, f"not rendering the batch: {len(earlier)} of its {len(batch.renders)} folders hold "
                         f"earlier renders ({earlier[0]}); {OVERWRITE_HINT}", "\n".join(earlier))
        try:
            batch_bpy.start(context.scene, batch)
        except OSError as exc:
            return _fail(self, f"cannot render the batch: {exc}")
        connection.session.clear_error()
        what = f"{len(batch.prompts)} prompt(s) x {len(batch.renders) // max(1, len(batch.prompts))} rig(s)"
        if bpy.app.background:
            last = ""

            def print_progress() -> None:
                nonlocal last
                if batch.status_line() != last:
                    last = batch.status_line()
                    print(f"[nerfart] {last}", flush=True)

            try:
                tick.drive_until(lambda: batch.finished, "the batch", print_progress)
            except RuntimeError as exc:
                return _fail(self, str(exc))
            failed = [r for r in batch.renders if r.state != "done"]
            if failed:
                return _fail(self, f"{batch.status_line()}: {failed[0].prompt} / {failed[0].rig}: "
                             f"{failed[0].error or failed[0].state}; summary {batch.summary[1]}",
                             "\n".join(f"{r.prompt} / {r.rig}: {r.error or r.state}" for r in failed))
            batch_bpy.done_reports.clear()  # reported here, not by the watcher
            self.report({"INFO"}, batch_bpy.last_done)
            return {"FINISHED"}
        tick.sync_runtime(context.window_manager)
        if context.window is not None and not NERFART_OT_watch_jobs.running:
            bpy.ops.nerfart.watch_jobs("INVOKE_DEFAULT")
        self.report({"INFO"}, f"batch of {what} sent; folders under {batch.output_folder}")
        return {"FINISHED"}


class NERFART_OT_extract_mesh(bpy.types.Operator):
    """Extract a coloured mesh and import it in place under the capture's placement"""

    bl_idname = "nerfart.extract_mesh"
    bl_label = "Extract Mesh"

    @classmethod
    def poll(cls, context):
        return _require_connection(cls)

    def execute(self, context):
        from .jobs_bpy import mesh_job

        try:
            job = mesh_job(context.scene)
        except ValueError as exc:
            return _fail(self, f"cannot extract a mesh: {exc}")
        return _submit(self, context, job)


class NERFART_OT_load_frames(bpy.types.Operator):
    """Load the render job's frames as image sequences on the cameras they were rendered from (a rig: each
    camera its own), reloading the images they had"""

    bl_idname = "nerfart.load_frames"
    bl_label = "Load Frames"

    job_id: StringProperty(name="Job ID", description="The render job (empty: the job selected in the list)",
                           default="", options={"SKIP_SAVE", "HIDDEN"})

    def execute(self, context):
        from .frames_bpy import show_frames
        from .results_bpy import output_root

        be = context.scene.nerfart.backend
        job_id = self.job_id or (be.jobs[be.jobs_index].job_id if 0 <= be.jobs_index < len(be.jobs) else "")
        ref = find_job(be, job_id)
        if ref is None or ref.kind != "RENDER" or not ref.output_dir:
            return _fail(self, "select a render job in the Jobs list first")
        try:
            images = show_frames(context.scene, output_root(ref.output_dir), f"NeRF-Art {ref.name}")
        except (ValueError, RuntimeError, OSError) as exc:
            return _fail(self, f"cannot load the frames: {exc}")
        self.report({"INFO"}, f"loaded {len(images)} image(s): {', '.join(i.name for i in images[:4])}"
                    + ("…" if len(images) > 4 else ""))
        return {"FINISHED"}


class NERFART_OT_job_remove(bpy.types.Operator):
    """Remove the selected job from this file's list (the backend keeps its files)"""

    bl_idname = "nerfart.job_remove"
    bl_label = "Remove Job"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 - Blender reads a set

    index: IntProperty(name="Index", description="Job list index", default=-1, min=-1, max=100_000,
                       options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        be = context.scene.nerfart.backend
        if not 0 <= be.jobs_index < len(be.jobs):
            cls.poll_message_set("Select a job")
            return False
        return True

    def execute(self, context):
        be = context.scene.nerfart.backend
        i = self.index if self.index >= 0 else be.jobs_index
        if 0 <= i < len(be.jobs):
            tick.dismissed.add(be.jobs[i].job_id)  # undo brings it back, a re-sync of the job list does not
            be.jobs.remove(i)
            be.jobs_index = min(be.jobs_index, max(0, len(be.jobs) - 1))
        return {"FINISHED"}


CLASSES = (
    NERFART_OT_connect,
    NERFART_OT_disconnect,
    NERFART_OT_test_connection,
    NERFART_OT_start_local_backend,
    NERFART_OT_stop_local_backend,
    NERFART_OT_reattach,
    NERFART_OT_clear_error,
    NERFART_OT_copy_error,
    NERFART_OT_cancel_job,
    NERFART_OT_resume_job,
    NERFART_OT_watch_jobs,
    NERFART_OT_import_capture,
    NERFART_OT_match_capture_frame,
    NERFART_OT_capture_from_scene,
    NERFART_OT_add_subject_bounds,
    NERFART_OT_select_subject_bounds,
    NERFART_OT_reset_subject_bounds,
    NERFART_OT_reconstruct,
    NERFART_OT_stylize,
    NERFART_OT_apply_style_preset,
    NERFART_OT_queue_add,
    NERFART_OT_queue_remove,
    NERFART_OT_queue_move,
    NERFART_OT_queue_run,
    NERFART_OT_render,
    NERFART_OT_batch_render,
    NERFART_OT_extract_mesh,
    NERFART_OT_load_frames,
    NERFART_OT_job_remove,
)
