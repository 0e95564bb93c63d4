"""The main-thread timer that drives all socket work, and the blocking loop used in background mode.

:func:`tick` is a plain function (tests call it directly; ``bpy.app.timers`` does not fire in module mode or
while a ``-b`` script runs). Each call drains the client for at most :data:`DRAIN_BUDGET_S`, applies the
messages to the session, turns events into Blender data (frames, meshes, previews), mirrors the state into
``WindowManager.nerfart_runtime`` and redraws the sidebar. It returns the next interval: 0.05 s (about 20 polls a
second) while something is in flight, 0.5 s otherwise. It never raises: an unexpected error becomes a message
in the panel instead of killing the timer.
"""

from __future__ import annotations

import time
import traceback
from collections import deque
from collections.abc import Callable

import bpy
from bpy.app.handlers import persistent

from . import connection
from .core.jobs import ACTIVE_STATES, Event, JobState, clip_text, format_bytes
from .core.results import result_text, result_warning

DRAIN_BUDGET_S = 0.005  # time to drain the socket per tick
HANDLE_BUDGET_S = 0.015  # time to turn events into Blender data per tick; the rest waits for the next tick
MAX_MESSAGES_PER_TICK = 64
BUSY_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.5
_KIND_ENUM = {"reconstruct": "RECONSTRUCT", "stylize": "STYLIZE", "render": "RENDER", "extract_mesh": "EXTRACT_MESH"}


_backlog: deque[Event] = deque()  # events drained but not yet applied to Blender (frames arriving in bursts)
_last_status: str | None = None
_last_shown: tuple = ()
_preview_serial = 0
_finish_serial = 0  # counts finished jobs, so a re-sync after undo knows which reconstruction finished last
dismissed: set[str] = set()  # ids of jobs the artist removed from a job list: a re-sync never brings them back


def tick() -> float:
    """One step of the bridge; returns the delay until the next one."""
    try:
        _backlog.extend(connection.poll(DRAIN_BUDGET_S, MAX_MESSAGES_PER_TICK))
        deadline = time.perf_counter() + HANDLE_BUDGET_S
        while _backlog and time.perf_counter() < deadline:
            event = _backlog.popleft()
            try:
                handle_event(event)
            except OSError as exc:  # a full disk or a read-only output folder: say which job and where
                what = event.job.label if event.job is not None else "a result"
                connection.session.set_error(f"cannot save {what}: {exc}")
        sync_runtime(bpy.context.window_manager)
    except Exception as exc:  # never let the timer die; show the problem instead
        connection.session.set_error(f"internal error in the NeRF-Art add-on: {exc}", traceback.format_exc())
        try:
            sync_runtime(bpy.context.window_manager)
        except Exception:
            traceback.print_exc()
    s = connection.session
    busy = bool(_backlog) or s.busy or s.state == "CONNECTING" or connection.local_backend.stopping
    return BUSY_INTERVAL_S if busy else IDLE_INTERVAL_S


# ---------------------------------------------------------------------------------------------------------
# Events -> Blender data
# ---------------------------------------------------------------------------------------------------------


def handle_event(event: Event) -> None:
    job = event.job
    if event.kind == "connected":
        reattach_after_connect()
    elif event.kind == "status" and event.message is not None:
        # Attach and status answers carry the backend's view of jobs (e.g. 'interrupted' after a restart):
        # show it in the saved job list right away.
        for rec in event.message.content.get("jobs") or []:
            known = connection.session.jobs.get(rec.get("job_id"))
            if known is not None:
                _update_job_ref(known)
    elif event.kind == "accepted" and job is not None:
        _record_job(job)
    elif event.kind == "frame" and job is not None:
        _on_frame(job, event.message)
    elif event.kind == "mesh" and job is not None:
        _on_mesh(job, event.message)
    elif event.kind == "preview" and job is not None:
        preview = event.message.content.get("preview") or {}
        img = _results().update_preview(event.message.blob(preview), preview.get("format", "png"))
        bpy.context.window_manager.nerfart_runtime.preview = img
        global _preview_serial
        _preview_serial += 1
    elif event.kind == "finished" and job is not None:
        _on_finished(job)
    if job is not None:
        _update_job_ref(job)
        if job.meta.get("batch") is not None:
            from . import batch_bpy

            batch_bpy.on_event(event)


def _results():
    from . import results_bpy

    return results_bpy


def _running_batches() -> list:
    from . import batch_bpy

    return batch_bpy.running()


def _batch_done_text() -> str:
    from . import batch_bpy

    return batch_bpy.last_done


def _scene_of(job: JobState) -> bpy.types.Scene:
    return bpy.data.scenes.get(job.meta.get("scene", "")) or bpy.context.scene


def _record_job(job: JobState) -> None:
    """Save an accepted job in its scene so a reopened file can reattach to it."""
    scene = _scene_of(job)
    jobs = scene.nerfart.backend.jobs
    _fill_job_ref(scene, job)
    be = scene.nerfart.backend
    pinned = be.selected_source_job
    be.jobs_index = len(jobs) - 1  # the new job's progress shows in the list...
    be.selected_source_job = pinned  # ...without changing what Render From ▸ Selected Job renders


def _fill_job_ref(scene: bpy.types.Scene, job: JobState) -> None:
    """The job's entry in the scene's job list (added when missing) and its queued prompt's link to it."""
    jobs = scene.nerfart.backend.jobs
    ref = next((j for j in jobs if j.job_id == job.job_id), None) or jobs.add()
    ref.job_id = job.job_id or ""
    ref.name = job.label or job.kind
    ref.kind = _KIND_ENUM.get(job.kind, "RECONSTRUCT")
    ref.endpoint = connection.session.endpoint
    ref.source_job = str(job.params.get("source_job", ""))
    ref.prompt = str(job.params.get("prompt", ""))
    ref.output_dir = str(job.meta.get("output_dir", ""))
    qi = job.meta.get("queue_index")
    if qi is not None and qi < len(scene.nerfart.stylize.queue):
        scene.nerfart.stylize.queue[qi].job_id = job.job_id or ""


def _update_job_ref(job: JobState) -> None:
    if not job.job_id:
        return
    scene = _scene_of(job)
    for ref in scene.nerfart.backend.jobs:
        if ref.job_id == job.job_id:
            ref.state = job.state
            ref.stage = job.stage
            ref.progress = job.progress
            ref.error = clip_text(job.error)
            ref.error_code = job.error_code
            # A job reattached after reopening the file knows its numbers only once its result comes again.
            ref.result = result_text(job) or ref.result
            ref.warning = result_warning(job) or ref.warning
    for item in scene.nerfart.stylize.queue:
        if item.job_id and item.job_id == job.job_id:
            item.state = job.state


def _on_frame(job: JobState, msg) -> None:
    from pathlib import Path

    results = _results()
    out_dir = Path(job.meta["output_dir"])
    path = results.save_frame(msg, out_dir, bool(job.meta.get("multi_camera")))
    job.meta.setdefault("files", []).append(str(path))
    if job.meta.get("open_sequence"):
        # On the camera the frame was rendered from (a rig: each camera its own folder), as frames arrive.
        from . import frames_bpy

        frames_bpy.on_frame(_scene_of(job), job.meta, f"NeRF-Art {job.label}", path,
                            int(msg.content.get("frame", 0)), str(msg.content.get("camera_name", "")))


def _on_mesh(job: JobState, msg) -> None:
    c = msg.content
    scene = _scene_of(job)
    placement = bpy.data.objects.get(job.meta.get("placement", "")) if job.meta.get("placement") else None
    coll = placement.users_collection[0] if placement is not None and placement.users_collection else scene.collection
    if c.get("format") == "glb":
        from pathlib import Path

        from . import mesh_import_bpy

        path = Path(job.meta.get("mesh_dir") or _results().output_root("//nerfart")) / f"mesh_{job.job_id}.glb"
        obj = mesh_import_bpy.import_glb(f"NeRF-Art {job.label}", msg.blob(c["glb"]), path, coll, placement)
        job.meta["object"] = obj.name
        job.meta["mesh_file"] = str(path)
        if job.meta.get("show_colours"):
            mesh_import_bpy.show_texture_colours()
        push_undo(f"NeRF-Art: import {obj.name}")
        return
    vertices = msg.array(c["vertices"])
    faces = msg.array(c["faces"])
    colors = msg.array(c["colors"]) if c.get("colors") else None
    obj = _results().mesh_object(f"NeRF-Art {job.label}", vertices, faces, colors, coll, placement,
                                 float(job.meta.get("decimate", 1.0)))
    job.meta["object"] = obj.name
    job.meta["mesh_vertices"] = len(vertices)
    if colors is not None and job.meta.get("show_colours"):
        _results().show_attribute_colours()
    push_undo(f"NeRF-Art: import {obj.name}")


def _on_finished(job: JobState) -> None:
    global _finish_serial
    _finish_serial += 1
    job.meta["finished"] = _finish_serial
    scene = _scene_of(job)
    if job.state == "done" and job.kind == "reconstruct" and job.job_id:
        scene.nerfart.backend.reconstruct_job = job.job_id
        _show_subject_bounds(scene, job)
    if job.kind == "render" and job.meta.get("files"):
        push_undo(f"NeRF-Art: frames of {job.label}")  # the loaded sequences survive a later Ctrl+Z
    if bpy.app.background:
        print(f"[nerfart] {job.status_line()}", flush=True)
        if warning := result_warning(job):
            print(f"[nerfart] warning: {warning}", flush=True)


def _show_subject_bounds(scene: bpy.types.Scene, job: JobState) -> None:
    """A finished reconstruction's subject bounds into the scene (or why they cannot be shown, in the panel).

    No undo step is pushed for them: after Ctrl+Z :func:`on_undo_redo` shows them again, so Ctrl+Z undoes the
    artist's last action rather than the arrival of the bounds.
    """
    from . import subject_bpy

    try:
        subject_bpy.on_reconstruct_done(scene, job)
    except ValueError as exc:
        connection.session.set_error(f"{job.label or job.kind}: {exc}")
        if bpy.app.background:
            print(f"[nerfart] warning: {exc}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Undo: results are undo steps of their own; the job list follows the backend, not the undo stack
# ---------------------------------------------------------------------------------------------------------


def push_undo(message: str) -> bool:
    """Make what just arrived from the backend its own undo step; returns whether one was pushed.

    Results arrive from the timer, outside any operator, so Blender records no undo step for them: a Ctrl+Z
    would go back to the last operator's step and drop every mesh, image and job entry added since. Pushing a
    step right after each import makes Ctrl+Z undo at most the newest import. The timer runs without a window
    in its context, which ``ed.undo_push`` needs, so the first window is lent. Nothing is pushed where undo is
    off (background mode until a script initialises undo with its own ``ed.undo_push``).
    """
    wm = bpy.context.window_manager
    window = bpy.context.window or (wm.windows[0] if wm is not None and wm.windows else None)
    if window is None or bpy.context.preferences.edit.undo_steps == 0:
        return False
    try:
        with bpy.context.temp_override(window=window, screen=window.screen):
            if not bpy.ops.ed.undo_history.poll():  # polls true once the undo stack exists
                return False
            return bpy.ops.ed.undo_push(message=message) == {"FINISHED"}
    except (RuntimeError, TypeError):  # e.g. a modal operator holds the context: the next import pushes
        return False


def resync_jobs() -> int:
    """Put every job this Blender follows back into its scene's job list with its true state; returns how
    many entries were added back.

    Undo and redo restore the scene's saved job list to an older state (entries missing, an interrupted job
    shown as running); the session (:data:`.connection.session`) is not undo data and holds each job's state as
    the backend last reported it, so it wins. Jobs the artist removed (Remove Job) stay removed.
    """
    added = 0
    latest_reconstruction: dict[str, JobState] = {}
    for job in connection.session.jobs.values():
        scene = bpy.data.scenes.get(job.meta.get("scene", ""))
        if not job.job_id or scene is None:
            continue
        if job.job_id not in dismissed and not any(ref.job_id == job.job_id for ref in scene.nerfart.backend.jobs):
            _fill_job_ref(scene, job)
            added += 1
        _update_job_ref(job)
        if job.kind == "reconstruct" and job.state == "done" and "finished" in job.meta:
            best = latest_reconstruction.get(scene.name)
            if best is None or job.meta["finished"] > best.meta["finished"]:
                latest_reconstruction[scene.name] = job
    for name, job in latest_reconstruction.items():
        be = bpy.data.scenes[name].nerfart.backend
        if be.reconstruct_job != job.job_id:
            be.reconstruct_job = job.job_id
    return added


@persistent
def on_undo_redo(*_args) -> None:
    """After undo or redo: the job list shows the backend's states again (see :func:`resync_jobs`), and the
    scene the newest reconstruction's subject bounds (:func:`.subject_bpy.resync_after_undo`)."""
    from . import subject_bpy

    try:
        resync_jobs()
        subject_bpy.resync_after_undo()
        sync_runtime(bpy.context.window_manager)
    except Exception:  # a handler must never break undo
        traceback.print_exc()


def reattach_after_connect() -> int:
    """After every (re)connection: follow this session's unfinished jobs and this file's saved ones again.

    The backend answers each ``attach`` with the job's state and re-sends the result of a finished one, so a
    job that ended, or was interrupted by a restart, while the connection was down shows its real state.
    """
    ids = [j.job_id for j in connection.session.jobs.values() if j.job_id and j.active]
    if ids:
        connection.attach(ids)
    return len(ids) + reattach_saved_jobs()


def reattach_saved_jobs() -> int:
    """Ask the backend for the jobs saved in this file that were not final; returns how many."""
    ids = []
    for scene in bpy.data.scenes:
        for ref in scene.nerfart.backend.jobs:
            if ref.job_id and ref.state in (*ACTIVE_STATES, "lost") and ref.job_id not in connection.session.jobs:
                job = JobState(kind=ref.kind.lower(), label=ref.name, job_id=ref.job_id, state="queued",
                               meta={"scene": scene.name, "output_dir": ref.output_dir})
                connection.session.track(job)
                ids.append(ref.job_id)
    if ids:
        connection.attach(ids)
    return len(ids)


# ---------------------------------------------------------------------------------------------------------
# Session -> WindowManager runtime properties
# ---------------------------------------------------------------------------------------------------------


def sync_runtime(wm: bpy.types.WindowManager) -> None:
    """Mirror the session into ``wm.nerfart_runtime``, update the status bar and redraw the sidebar."""
    rt = wm.nerfart_runtime
    s = connection.session
    rt.connection = s.state
    rt.status_text = connection.status_line()
    info = s.info or {}
    rt.backend_version = str(info.get("backend_version", ""))
    gpu = info.get("gpu") or {}
    rt.gpu_name = str(gpu.get("name", "")) if gpu else ("no GPU" if info else "")
    rt.gpu_memory = (f"{format_bytes(gpu['memory_free'])} free of {format_bytes(gpu['memory_total'])}"
                     if gpu and gpu.get("memory_total") else "")
    # The backend counts its queue only when it answers hello: count this Blender's queued and running jobs.
    rt.queue_length = len(s.active_jobs())
    rt.clip_models = ", ".join(info.get("clip_models", []) or [])
    job = s.current_job()
    rt.busy = job is not None
    rt.job_text = job.status_line() if job else ""
    rt.progress = job.progress if job else 0.0
    rt.current_job_id = (job.job_id or "") if job else ""
    rt.job_result = result_text(job) if job else ""
    rt.job_warning = result_warning(job) if job else ""
    rt.batch_text = "; ".join(b.status_line() for b in _running_batches()) or _batch_done_text()
    rt.error = clip_text(s.last_error)
    rt.error_detail = clip_text(s.last_error_detail)
    lb = connection.local_backend
    rt.local_backend = (f"running (pid {lb.proc.pid})" if lb.running else lb.exit_message)
    pending = 0
    for scene in bpy.data.scenes:
        pending += sum(1 for ref in scene.nerfart.backend.jobs
                       if ref.job_id and ref.state in (*ACTIVE_STATES, "lost") and ref.job_id not in s.jobs)
    rt.reattach_pending = pending
    _status_bar(wm, rt.job_text if rt.busy else (_batch_done_text() or None))
    shown = (rt.connection, rt.status_text, rt.gpu_memory, rt.queue_length, rt.job_text, rt.job_result,
             rt.job_warning, rt.batch_text, rt.progress, rt.error,
             rt.local_backend, rt.reattach_pending, _preview_serial,
             sum(len(sc.nerfart.backend.jobs) for sc in bpy.data.scenes))
    global _last_shown
    if shown != _last_shown:
        _last_shown = shown
        _redraw(wm)


def _status_bar(wm, text: str | None) -> None:
    """Set our status bar text when it changes (and clear it once), never touching other add-ons' text."""
    global _last_status
    value = f"NeRF-Art: {text}" if text else None
    if value == _last_status:
        return
    _last_status = value
    for window in wm.windows:
        workspace = window.workspace
        if workspace is not None:
            workspace.status_text_set(value)


def _redraw(wm) -> None:
    """Redraw the sidebars (only the UI regions: the viewport itself is not redrawn) and preferences."""
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()
            elif area.type == "PREFERENCES":
                area.tag_redraw()


# ---------------------------------------------------------------------------------------------------------
# Background mode: the same operations, blocking, with progress on stdout
# ---------------------------------------------------------------------------------------------------------


def wait_connected(timeout_s: float) -> None:
    """Block until the hello is answered (background mode only).

    Raises:
        RuntimeError: with the session's error text if the backend does not answer.
    """
    deadline = time.monotonic() + timeout_s
    while connection.session.state == "CONNECTING" and time.monotonic() < deadline:
        for event in connection.poll(0.05):
            handle_event(event)
        time.sleep(0.01)
    if connection.session.state != "CONNECTED":
        raise RuntimeError(connection.session.last_error or f"no answer from a backend at "
                           f"{connection.session.endpoint} within {timeout_s:g} s")


def drive_until(done: Callable[[], bool], what: str, on_step: Callable[[], None] | None = None,
                lost_timeout_s: float = 60.0) -> None:
    """Poll and apply events until ``done()`` (background mode: the timer does not run there).

    Raises:
        RuntimeError: if the backend stops answering for ``lost_timeout_s`` while ``what`` runs.
    """
    lost_since: float | None = None
    while not done():
        for event in connection.poll(0.05):
            handle_event(event)
        if on_step is not None:
            on_step()
        if connection.session.state == "LOST":
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > lost_timeout_s:
                raise RuntimeError(f"the backend at {connection.session.endpoint} stopped answering while {what} "
                                   "ran")
        else:
            lost_since = None
        time.sleep(0.01)


def run_blocking(job: JobState, lost_timeout_s: float = 60.0) -> JobState:
    """Drive the bridge until ``job`` (already submitted) finishes, printing progress lines.

    Raises:
        RuntimeError: if the job fails or the backend stops answering.
    """
    last_line = ""

    def print_progress() -> None:
        nonlocal last_line
        line = job.status_line()
        if line != last_line:
            print(f"[nerfart] {line} ({job.progress * 100:.0f}%)", flush=True)
            last_line = line

    try:
        drive_until(lambda: job.state in ("done", "failed", "cancelled", "interrupted", "lost"),
                    job.label or job.kind, print_progress, lost_timeout_s)
    except RuntimeError:
        job.state = "lost"
        raise
    print(f"[nerfart] {job.status_line()}", flush=True)
    if job.state != "done":
        raise RuntimeError(f"{job.label or job.kind} {job.state}: {job.error or 'no reason given'}")
    return job


# ---------------------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------------------


@persistent
def on_load_post(*_args) -> None:
    """After a file loads: forget the previous file's jobs and reattach this file's unfinished ones."""
    s = connection.session
    s.jobs = {k: v for k, v in s.jobs.items() if v.active and v.meta.get("scene") in bpy.data.scenes}
    if s.state == "CONNECTED":
        reattach_saved_jobs()
    sync_runtime(bpy.context.window_manager)


def say_goodbye() -> str:
    """Before the add-on is disabled: record and say what happens to this Blender's unfinished jobs; returns the
    sentence ("" when none runs).

    Disabling closes the connection and stops a local backend the add-on started, which interrupts its jobs
    (the backend keeps their checkpoints): their entries read "lost" with why, so that enabling the add-on and
    connecting reattaches them, shows them as interrupted and offers Resume. A remote backend's jobs go on.
    """
    from . import batch_bpy

    s, lb = connection.session, connection.local_backend
    active = [j for j in s.jobs.values() if j.job_id and j.active]
    batch_bpy.reset()
    if not active:
        return ""
    if lb.running:
        text = (f"NeRF-Art disabled: stopping the local backend interrupts {len(active)} running job(s). Enable "
                "the add-on, start the backend and connect: they show as interrupted and Resume continues them "
                "from their latest checkpoint.")
    else:
        text = (f"NeRF-Art disabled: {len(active)} job(s) keep running on {s.endpoint}. Enable the add-on and "
                "connect to follow them again.")
    for job in active:
        scene = bpy.data.scenes.get(job.meta.get("scene", ""))
        ref = next((r for r in scene.nerfart.backend.jobs if r.job_id == job.job_id), None) if scene else None
        if ref is not None and lb.running:
            ref.state, ref.error = "lost", text
    print(f"[nerfart] {text}", flush=True)
    return text


def reset_runtime() -> None:
    """Forget the runtime display of an earlier enable (the WindowManager keeps its values across disable and
    enable, which showed a stale error): the panel starts from the current, fresh session."""
    global _last_status, _last_shown
    _backlog.clear()
    _last_status, _last_shown = None, ()
    try:
        wm = bpy.context.window_manager
    except (AttributeError, IndexError):  # no context yet (Blender starting up): nothing was shown before
        return
    if wm is not None:
        wm.property_unset("nerfart_runtime")


def register_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=IDLE_INTERVAL_S, persistent=True)
    if on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(on_load_post)
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        if on_undo_redo not in handlers:
            handlers.append(on_undo_redo)


def unregister_timer() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    while on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(on_load_post)
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        while on_undo_redo in handlers:
            handlers.remove(on_undo_redo)
    _backlog.clear()
    _status_bar(bpy.context.window_manager, None)

