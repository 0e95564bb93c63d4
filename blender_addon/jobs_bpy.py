"""Turn the scene's settings into backend jobs (parameters, uploads and bookkeeping). Operators stay thin:
they call one builder here, then :func:`.connection.submit`. Every builder makes its job with :func:`scene_job`,
which adds what all job kinds share (the scene, the subject bounds)."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import bpy

from . import cameras_bpy, connection, subject_bpy
from .capture_bpy import CAPTURE_ROOT_KEY, placement_matrix
from .core.camera_export import camera_list_to_dicts
from .core.jobs import JobState
from .core.outputs import existing_files, render_folder_name
from .core.poses import as_nested_list
from .core.presets import split_negative_prompts
from .core.sampling import frame_range, plan_active_camera, plan_rig
from .preferences import is_loopback
from .properties import find_job
from .results_bpy import output_root

CAPTURE_FORMATS = {"TRANSFORMS_JSON": "transforms_json", "COLMAP": "colmap", "IDR": "idr", "LLFF": "llff"}
UPLOAD_SKIP_DIRS = {"__pycache__", ".git"}


def capture_folder(scene: bpy.types.Scene) -> Path:
    """The capture folder to reconstruct (the folder field, else the imported collection's source).

    Raises:
        ValueError: when none is set or it does not exist.
    """
    cap = scene.nerfart.capture
    text = cap.folder or (cap.cameras.get(CAPTURE_ROOT_KEY, "") if cap.cameras is not None else "")
    if not text:
        raise ValueError("choose a capture folder first (Capture panel), or capture the scene")
    folder = Path(bpy.path.abspath(text))
    if not folder.is_dir():
        raise ValueError(f"the capture folder {folder} does not exist")
    return folder


def zip_folder(folder: Path, limit_bytes: int | None = None) -> bytes:
    """The folder as an uncompressed zip (photos are compressed already), for uploading.

    Raises:
        ValueError: if it would exceed ``limit_bytes`` (the backend's message size limit).
    """
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d not in UPLOAD_SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(root) / name
                total += path.stat().st_size
                if limit_bytes is not None and total > limit_bytes:
                    raise ValueError(f"the capture is larger than the backend accepts in one message "
                                     f"({limit_bytes / 2**20:.0f} MiB); use a backend on this machine or a shared "
                                     "folder and the Path transfer")
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def scene_job(scene: bpy.types.Scene, kind: str, label: str, params: dict, meta: dict | None = None,
              **fields) -> JobState:
    """A job of ``scene``: every job the add-on sends is made here, so what all kinds share is added once.

    The capture's subject bounds go with every kind (the backend separates subject and background with them
    in each job); without the empty the parameter is left out and the backend uses its own.

    Raises:
        ValueError: subject bounds that cannot be sent (flat, or two empties), saying what to do.
    """
    bounds = subject_bpy.job_bounds(scene)
    if bounds is not None:
        params["subject_bounds"] = bounds.to_param()
    return JobState(kind, label, params=params, meta={"scene": scene.name, **(meta or {})}, **fields)


def reconstruct_job(scene: bpy.types.Scene, endpoint: str, max_bytes: int | None = None
                    ) -> tuple[JobState, dict | None]:
    """The reconstruct job for the scene's capture, with the upload if the backend is remote."""
    cap = scene.nerfart.capture
    folder = capture_folder(scene)
    params: dict = {"preset": cap.preset.lower(), "scale": float(cap.scale), "background": cap.background.lower(),
                    "holdout_every": int(cap.holdout_every), "seed": int(cap.seed)}
    if cap.steps > 0:
        params["steps"] = int(cap.steps)
    if cap.format in CAPTURE_FORMATS:
        params["capture_format"] = CAPTURE_FORMATS[cap.format]
    transfer = cap.transfer
    if transfer == "AUTO":
        transfer = "PATH" if is_loopback(endpoint) else "UPLOAD"
    inputs = None
    if transfer == "PATH":
        params["capture_path"] = str(folder)
    else:
        inputs = {"capture": (zip_folder(folder, max_bytes), "zip")}
    label = f"reconstruct {folder.name}"
    return scene_job(scene, "reconstruct", label, params), inputs


def stylize_job(scene: bpy.types.Scene, item=None, queue_index: int | None = None) -> JobState:
    """A stylize job from the stylize settings, or from a queued prompt ``item``."""
    st = scene.nerfart.stylize
    source = scene.nerfart.backend.reconstruct_job
    if not source:
        raise ValueError("reconstruct the capture first: stylization starts from a finished reconstruction")
    src = item if item is not None else st
    prompt = (src.name if item is not None else st.prompt).strip()
    if not prompt:
        raise ValueError("write a prompt first (or pick a preset style)")
    params = {
        "source_job": source, "prompt": prompt, "source_text": src.source_text.strip() or "photo",
        "strength": float(src.strength), "colour_only": bool(src.colour_only), "preset": st.preset.lower(),
        "seed": int(st.seed),
    }
    if st.scale > 0:  # 0: the preset's resolution (an explicit scale would override every preset's)
        params["scale"] = float(st.scale)
    negatives = split_negative_prompts(src.negative_prompts)
    if negatives:
        params["negative_prompts"] = negatives
    if src.iterations > 0:
        params["iterations"] = int(src.iterations)
    if src.shape_freedom > 0 and not src.colour_only:  # 0 is the backend's default; colour_only ignores it
        params["shape_freedom"] = round(float(src.shape_freedom), 4)  # a float32 property: no 0.25000000372
    if src.clip_model.strip():
        params["clip_model"] = src.clip_model.strip()
    if src.clip_pretrained.strip():
        params["clip_pretrained"] = src.clip_pretrained.strip()
    meta = {"queue_index": queue_index} if queue_index is not None else {}
    return scene_job(scene, "stylize", f"stylize '{prompt[:40]}'", params, meta)


def resolve_source_job(scene: bpy.types.Scene) -> str:
    """The job Render and Extract Mesh use, by the Render From setting.

    Raises:
        ValueError: when there is no finished job of the wanted kind.
    """
    be = scene.nerfart.backend
    if be.render_source == "RECONSTRUCTION":
        if not be.reconstruct_job:
            raise ValueError("no finished reconstruction yet")
        return be.reconstruct_job
    if be.render_source == "SELECTED":
        ref = find_job(be, be.selected_source_job)
        if ref is None:
            raise ValueError("select a finished reconstruction or stylization in the Jobs list first (Render "
                             "From ▸ Selected Job renders the one selected last)")
        if ref.state != "done":
            raise ValueError(f"the selected job '{ref.name}' is {ref.state}, not finished; select a finished "
                             "reconstruction or stylization in the Jobs list")
        return ref.job_id
    done = [r for r in be.jobs if r.kind == "STYLIZE" and r.state == "done" and r.job_id]
    if not done:
        raise ValueError("no finished stylization yet (or set Render From to Reconstruction)")
    return done[-1].job_id


@dataclass
class RenderTarget:
    """What one render job renders and where it writes, decided before any camera is sampled."""

    source_job: str
    source_name: str  # the source stylization's prompt, or "reconstruction"
    cameras: str  # the rig collection's or the active camera's name
    rig: bpy.types.Collection | None
    frames: list[int]  # the frames sampled (a rig at the current frame: that one)
    folder: Path

    @property
    def label(self) -> str:
        return f"render {self.folder.name}"


def source_name(scene: bpy.types.Scene, job_id: str) -> str:
    """What a render's source is called in folder names: the stylization's prompt, else "reconstruction"."""
    ref = find_job(scene.nerfart.backend, job_id)
    if ref is not None and ref.kind == "STYLIZE":
        return ref.prompt or ref.name.removeprefix("stylize ").strip("'")
    return "reconstruction"


def render_target(scene: bpy.types.Scene, source: str | None = None,
                  rig: bpy.types.Collection | None = None) -> RenderTarget:
    """The render the Outputs settings ask for (``rig`` given: that rig, for a batch), from ``source`` (default:
    the Render From setting).

    Raises:
        ValueError: nothing to render from, no rig or camera, an empty frame range.
    """
    out = scene.nerfart.outputs
    source = source or resolve_source_job(scene)
    if out.use_scene_range:
        frames = frame_range(scene.frame_start, scene.frame_end, scene.frame_step)
    else:
        frames = frame_range(out.frame_start, out.frame_end, out.frame_step)
    if rig is not None or out.mode == "RIG":
        rig = rig or out.rig
        if rig is None:
            raise ValueError("choose the rig collection whose cameras to render")
        if not cameras_bpy.rig_camera_names(rig):
            raise ValueError(f"the rig collection '{rig.name}' holds no camera objects")
        cameras = rig.name
        if out.rig_frames == "CURRENT":
            frames = [scene.frame_current]
    else:
        if scene.camera is None and not any(m.camera for m in scene.timeline_markers):
            raise ValueError("the scene has no active camera")
        cameras = scene.camera.name if scene.camera is not None else "markers"
    name = source_name(scene, source)
    folder = output_root(out.output_dir) / render_folder_name(name, cameras, frames)
    return RenderTarget(source, name, cameras, rig, frames, folder)


def folder_in_use(folder: Path) -> str | None:
    """The label of an unfinished render of this session that writes into ``folder``, or None."""
    for job in connection.session.active_jobs():
        if job.kind == "render" and job.meta.get("output_dir") == str(folder):
            return job.label
    return None


def earlier_render(folder: Path) -> str | None:
    """Why rendering into ``folder`` would replace earlier files (it holds some), or None."""
    count = existing_files(folder)
    return f"{folder} already holds {count} file(s) from an earlier render" if count else None


def render_job(scene: bpy.types.Scene, target: RenderTarget, open_sequence: bool | None = None) -> JobState:
    """The render job of ``target``: its cameras sampled at its frames (every rig camera, or the active one)."""
    out = scene.nerfart.outputs
    if target.rig is not None:
        plan = plan_rig(cameras_bpy.rig_camera_names(target.rig), target.frames)
    else:
        plan = plan_active_camera(target.frames)
    placement = placement_matrix(scene.nerfart.capture.placement)
    records = cameras_bpy.sample_cameras(scene, plan, placement)
    multi = target.rig is not None and len({r.name for r in records}) > 1
    params = {"source_job": target.source_job, "cameras": camera_list_to_dicts(records),
              "format": out.file_format.lower()}
    if placement is not None:  # EXR depth and normals come back in this scene's units and axes
        params["placement"] = as_nested_list(placement)
    if out.include_background:  # left out when off: false is the backend's default (the subject alone)
        params["include_background"] = True
    return scene_job(scene, "render", target.label, params,
                     {"output_dir": str(target.folder), "multi_camera": multi,
                      "open_sequence": bool(out.open_sequence if open_sequence is None else open_sequence)},
                     frames_expected=len(records))


def mesh_job(scene: bpy.types.Scene) -> JobState:
    out = scene.nerfart.outputs
    source = resolve_source_job(scene)
    placement = scene.nerfart.capture.placement
    if placement is not None:
        placement_matrix(placement)  # validate the placement before the backend works
    params = {"source_job": source, "resolution": int(out.mesh_resolution),
              "keep_largest_only": bool(out.mesh_keep_largest), "mesh_format": out.mesh_format.lower()}
    if out.mesh_format == "GLB":
        params.update(texture_size=int(out.mesh_texture_size), target_faces=int(out.mesh_target_faces))
    return scene_job(scene, "extract_mesh", f"mesh {source[:8]}", params,
                     {"placement": placement.name if placement else "",
                      # Decimate is the PLY's (in Blender); a GLB is decimated by the backend to Faces.
                      "decimate": float(out.mesh_decimate) if out.mesh_format == "PLY" else 1.0,
                      "show_colours": bool(out.mesh_show_colours),
                      "mesh_dir": str(output_root(out.output_dir) / "meshes")})
