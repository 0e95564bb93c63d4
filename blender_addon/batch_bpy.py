"""Batch rendering in Blender: every prompt x every camera rig, one output folder each, and a summary.

:func:`plan` turns the scene (its Batch Queue and Rigs collection, or names given to the operator) into a
:class:`.core.batch.Batch`; :func:`start` submits the stylizations (reusing a prompt's finished one);
:func:`on_event`, called by :mod:`.tick` for every finished job, submits a prompt's rig renders once its
stylization is done and writes the summary when the last render ends. The same path runs in the UI (the
timer drives it) and in background mode (the operator drives the same events until the batch is done).
"""

from __future__ import annotations

from pathlib import Path

import bpy

from . import cameras_bpy, connection, subject_bpy
from .core.advice import batch_done_text
from .core.batch import Batch, BatchRender
from .core.jobs import Event
from .core.outputs import remove_frames, render_folder_name
from .jobs_bpy import earlier_render, folder_in_use, render_job, render_target, stylize_job
from .results_bpy import output_root

_running: list[Batch] = []  # batches of this Blender session that have not finished
last_done = ""  # what the last finished batch did and where its outputs are (panel, status bar)
done_reports: list[tuple[str, str]] = []  # (level, text) of finished batches, for the info bar (watch_jobs)


def running() -> list[Batch]:
    return list(_running)


def reset() -> None:
    """Forget this Blender session's batches (the add-on is being disabled: their jobs are no longer followed)."""
    global last_done
    _running.clear()
    done_reports.clear()
    last_done = ""


def running_in(scene_name: str) -> bool:
    """Whether a batch started from this scene is still running (its Render Batch button waits)."""
    return any(b.scene == scene_name for b in _running)


def rigs_of(scene: bpy.types.Scene, names: list[str]) -> list[bpy.types.Collection]:
    """The rig collections: those named, else the children of Outputs ▸ Rigs that hold cameras (or that
    collection itself when it holds the cameras directly).

    Raises:
        ValueError: an unknown name, no rigs chosen, or a rig without cameras.
    """
    if names:
        rigs = []
        for name in names:
            coll = bpy.data.collections.get(name)
            if coll is None:
                raise ValueError(f"there is no collection named '{name}' (rigs are collections of cameras)")
            rigs.append(coll)
    else:
        parent = scene.nerfart.outputs.batch_rigs
        if parent is None:
            raise ValueError("choose the collection that holds the camera rigs (Outputs ▸ Batch ▸ Rigs)")
        rigs = [c for c in parent.children if cameras_bpy.rig_camera_names(c)]
        if not rigs:
            rigs = [parent]
    for rig in rigs:
        if not cameras_bpy.rig_camera_names(rig):
            raise ValueError(f"the rig collection '{rig.name}' holds no camera objects")
    return rigs


def prompts_of(scene: bpy.types.Scene, prompts: list[str]) -> list[str]:
    """The prompts given, else the Batch Queue's; each once.

    Raises:
        ValueError: when there are none.
    """
    chosen = prompts or [q.name.strip() for q in scene.nerfart.stylize.queue if q.name.strip()]
    if not chosen:
        raise ValueError("add prompts to the Batch Queue (Stylize ▸ Add to Queue) first")
    return list(dict.fromkeys(chosen))


def plan(scene: bpy.types.Scene, prompts: list[str], rigs: list[bpy.types.Collection]) -> Batch:
    """One render per (prompt, rig) with its folder under the output folder.

    Raises:
        ValueError: no reconstruction yet, an empty frame range, two renders that would share a folder, or
            subject bounds that cannot be sent.
    """
    reconstruction = scene.nerfart.backend.reconstruct_job
    if not reconstruction:
        raise ValueError("reconstruct the capture first: every prompt of the batch is stylized from it")
    subject_bpy.job_bounds(scene)  # every job of the batch sends them: refuse the batch now, not job by job
    root = output_root(scene.nerfart.outputs.output_dir)
    renders: list[BatchRender] = []
    by_folder: dict[str, str] = {}
    for prompt in prompts:
        for rig in rigs:
            frames = render_target(scene, source=reconstruction, rig=rig).frames
            folder = str(root / render_folder_name(prompt, rig.name, frames))
            if folder in by_folder:
                raise ValueError(f"the prompts '{by_folder[folder]}' and '{prompt}' would share the folder "
                                 f"{Path(folder).name}: make them differ in letters or digits")
            by_folder[folder] = prompt
            renders.append(BatchRender(prompt, rig.name, frames, folder))
    return Batch(renders, str(root), reconstruction)


def earlier_renders(batch: Batch) -> list[str]:
    """Why the batch would replace earlier files: one line per folder that holds some."""
    return [why for r in batch.renders if (why := earlier_render(Path(r.folder))) is not None]


def busy_folders(batch: Batch) -> list[str]:
    return [f"{label} is still writing into {r.folder}" for r in batch.renders
            if (label := folder_in_use(Path(r.folder))) is not None]


def start(scene: bpy.types.Scene, batch: Batch) -> None:
    """Submit the batch: a stylization per prompt (a prompt whose queued stylization is done is reused and
    its renders go at once). Earlier frames in the batch's folders are removed first (the caller asked).

    A prompt whose stylization cannot be submitted fails its renders with the reason; the others go on.
    """
    global last_done
    for r in batch.renders:
        remove_frames(Path(r.folder))
    batch.scene = scene.name
    last_done = ""
    _running.append(batch)
    st = scene.nerfart.stylize
    for prompt in batch.prompts:
        index = next((i for i, q in enumerate(st.queue) if q.name.strip() == prompt), None)
        if index is None:  # a prompt given by name only: it joins the queue with the current settings
            item = st.queue.add()
            item.name = prompt
            for key in ("source_text", "negative_prompts", "strength", "iterations", "colour_only",
                        "shape_freedom", "clip_model", "clip_pretrained"):
                setattr(item, key, getattr(st, key))
            index = len(st.queue) - 1
        item = st.queue[index]
        if item.job_id and item.state == "done":
            _submit_renders(scene, batch, batch.stylized(prompt, item.job_id, "done"))
            continue
        try:
            job = stylize_job(scene, item, index)
            job.meta["batch"], job.meta["batch_prompt"] = batch, prompt
            connection.submit(job)
        except ValueError as exc:  # e.g. the connection dropped: this prompt fails, the others still go
            batch.stylized(prompt, "", "failed", f"not submitted: {exc}")
            continue
        item.state = "submitting"
    _finish_if_done(batch)


def _submit_renders(scene: bpy.types.Scene, batch: Batch, renders: list[BatchRender]) -> None:
    for r in renders:
        try:
            target = render_target(scene, source=r.stylize_job, rig=bpy.data.collections[r.rig])
            target.folder = Path(r.folder)  # named after the batch's prompt, whatever the job list calls it
            job = render_job(scene, target, open_sequence=False)
            job.meta["batch"], job.meta["batch_render"] = batch, r
            connection.submit(job)
            r.state = "rendering"
        except (KeyError, ValueError) as exc:
            r.state, r.error = "failed", f"not submitted: {exc}"


def on_event(event: Event) -> None:
    """Advance the batch a finished job belongs to (called by :func:`.tick.handle_event`)."""
    job = event.job
    if event.kind != "finished" or job is None or job.meta.get("batch") is None:
        return
    batch: Batch = job.meta["batch"]
    scene = bpy.data.scenes.get(job.meta.get("scene", "")) or bpy.context.scene
    if "batch_prompt" in job.meta:
        ready = batch.stylized(job.meta["batch_prompt"], job.job_id or "", job.state, job.error)
        _submit_renders(scene, batch, ready)
    elif "batch_render" in job.meta:
        batch.rendered(job.meta["batch_render"], job.job_id or "", job.state, len(job.meta.get("files", [])),
                       job.error)
    _finish_if_done(batch)


def _finish_if_done(batch: Batch) -> None:
    if not batch.finished or batch.summary is not None:
        return
    global last_done
    json_path, text_path = batch.write_summary()
    if batch in _running:
        _running.remove(batch)
    for scene in bpy.data.scenes:
        if output_root(scene.nerfart.outputs.output_dir) == Path(batch.output_folder):
            scene.nerfart.outputs.batch_summary = str(text_path)
    print(f"[nerfart] {batch.status_line()}; summary {text_path} and {json_path.name}", flush=True)
    last_done = batch_done_text(batch.counts(), batch.output_folder, text_path.name)
    failed = any(r.state != "done" for r in batch.renders)
    done_reports.append(("WARNING" if failed else "INFO", last_done))
