"""Property groups: one per concern, saved with the .blend under ``Scene.nerfart``; runtime state on the
WindowManager (``WindowManager.nerfart_runtime``, never saved)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .core.jobs import CONNECTION_STATES

# Folders may be relative to the .blend ("//..."); every use resolves them with bpy.path.abspath. Blender 4.5+
# warns when such a path is set on a property without this option, which 4.2 LTS does not know.
BLEND_RELATIVE = {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()

SIZE_PRESETS = [
    ("TINY", "Tiny", "Minutes on any GPU; for checking a setup, not for final results"),
    ("FAST", "Fast", "A quick preview quality"),
    ("DEFAULT", "Default", "The backend's standard settings"),
    ("QUALITY", "Quality", "Slower, sharper results"),
]
JOB_KINDS = [
    ("RECONSTRUCT", "Reconstruct", "Fit a NeRF to the capture"),
    ("STYLIZE", "Stylize", "Stylize a reconstruction from a text prompt"),
    ("RENDER", "Render", "Render frames from a reconstruction or stylization"),
    ("EXTRACT_MESH", "Extract Mesh", "Extract a coloured mesh"),
]


def _is_empty(_self, obj) -> bool:
    return obj.type == "EMPTY"


class NERFART_PG_job(bpy.types.PropertyGroup):
    """A job this file submitted (saved, so that a reopened file can reattach to it)."""

    __slots__ = ()

    name: StringProperty(name="Label", description="What the job does, as shown in the job list", default="")
    job_id: StringProperty(name="Job ID", description="The backend's id of this job", default="")
    kind: EnumProperty(name="Kind", description="Job kind", items=JOB_KINDS, default="RECONSTRUCT")
    state: StringProperty(name="State", description="Last known state: queued, running, done, failed, "
                          "cancelled, interrupted or lost", default="queued")
    endpoint: StringProperty(name="Backend", description="Address of the backend that runs the job", default="")
    source_job: StringProperty(name="Source Job", description="Job whose result this job used", default="")
    output_dir: StringProperty(name="Output Folder", description="Where this job's frames or mesh were written",
                               default="", subtype="DIR_PATH",
                           options=BLEND_RELATIVE)
    progress: FloatProperty(name="Progress", description="Progress of the current stage", default=0.0, min=0.0,
                            max=1.0, subtype="FACTOR")
    stage: StringProperty(name="Stage", description="Last reported stage", default="")
    error: StringProperty(name="Error", description="Why the job failed", default="")
    error_code: StringProperty(name="Error Code", description="The backend's code for the failure", default="")
    prompt: StringProperty(name="Prompt", description="The prompt of a stylize job", default="")
    result: StringProperty(name="Result", description="The job's quality numbers: PSNR, losses, frames",
                           default="")
    warning: StringProperty(name="Warning", description="What to know about the result (e.g. not prompt-driven)",
                            default="")


def _on_job_selected(backend, _context) -> None:
    """Remember the reconstruction or stylization picked in the job list as Render From ▸ Selected Job.

    New jobs take the list selection (so their progress shows), which must not change what the next render
    starts from: picking a render or mesh job leaves the remembered source alone.
    """
    if 0 <= backend.jobs_index < len(backend.jobs):
        ref = backend.jobs[backend.jobs_index]
        if ref.kind in ("RECONSTRUCT", "STYLIZE") and ref.job_id:
            backend.selected_source_job = ref.job_id


class NERFART_PG_backend(bpy.types.PropertyGroup):
    """The backend jobs of this file and which results to build on."""

    __slots__ = ()

    jobs: CollectionProperty(type=NERFART_PG_job, name="Jobs", description="Jobs submitted from this file")
    jobs_index: IntProperty(name="Active Job", description="Selected job in the list", default=0, min=0,
                            max=100_000, update=_on_job_selected)
    selected_source_job: StringProperty(name="Selected Source", description="Job id of the reconstruction or "
                                        "stylization last selected in the job list (Render From ▸ Selected Job)",
                                        default="")
    reconstruct_job: StringProperty(name="Reconstruction", description="Job id of the reconstruction that "
                                    "stylization starts from (set when a reconstruction finishes)", default="")
    render_source: EnumProperty(
        name="Render From", description="Which result Render and Extract Mesh use",
        items=[("LATEST_STYLIZED", "Latest Stylization", "The most recent finished stylization"),
               ("RECONSTRUCTION", "Reconstruction", "The unstylized reconstruction"),
               ("SELECTED", "Selected Job", "The reconstruction or stylization last selected in the job list")],
        default="LATEST_STYLIZED")


def find_job(backend: NERFART_PG_backend, job_id: str) -> NERFART_PG_job | None:
    """The saved job of ``backend`` (``Scene.nerfart.backend``) with this id, or None (also for an empty id).

    A function, not a method: the bpy module of Blender 4.2 (4.2.23) crashes at exit when a registered
    PropertyGroup defines a method.
    """
    return next((ref for ref in backend.jobs if job_id and ref.job_id == job_id), None)


class NERFART_PG_capture_warning(bpy.types.PropertyGroup):
    """One thing the artist must know about the imported capture (shown in the Capture panel)."""

    __slots__ = ()

    text: StringProperty(name="Warning", description="What to know about the imported capture", default="")


SUBJECT_SHAPES = [
    ("BOX", "Box", "The subject is what lies inside the box"),
    ("ELLIPSOID", "Ellipsoid", "The subject is what lies inside the ellipsoid (rounder: less of the background "
     "around the head)"),
]


def _get_subject_shape(self) -> int:
    """The shape the subject bounds empty is drawn as (its display type is the truth, not a stored value)."""
    from .subject_bpy import find_subject

    try:
        empty = find_subject(self.id_data)
    except ValueError:  # two empties: the panel says so
        return 0
    return 1 if empty is not None and empty.empty_display_type == "SPHERE" else 0


def _set_subject_shape(self, value: int) -> None:
    from .subject_bpy import find_subject

    try:
        empty = find_subject(self.id_data)
    except ValueError:
        return
    if empty is not None:
        empty.empty_display_type = "SPHERE" if value == 1 else "CUBE"


class NERFART_PG_capture(bpy.types.PropertyGroup):
    """Where the capture comes from, how it sits in the scene, and how to reconstruct it."""

    __slots__ = ()

    source: EnumProperty(
        name="Source", description="Where the multi-view capture comes from",
        items=[("FOLDER", "Folder", "A folder of photos with cameras (transforms.json, COLMAP, "
                "IDR cameras.npz or LLFF poses_bounds.npy)"),
               ("SCENE", "Scene", "Render the selected objects from a ring of cameras with Cycles")],
        default="FOLDER")
    folder: StringProperty(name="Capture Folder", description="Folder holding the capture's images and camera "
                           "file", default="", subtype="DIR_PATH",
                           options=BLEND_RELATIVE)
    format: EnumProperty(
        name="Format", description="How to read the capture's cameras",
        items=[("AUTO", "Auto-detect", "transforms.json, then COLMAP, then cameras.npz, then poses_bounds.npy"),
               ("TRANSFORMS_JSON", "transforms.json", "nerfstudio / NeRF-synthetic / instant-ngp"),
               ("COLMAP", "COLMAP", "A COLMAP sparse model (sparse/0)"),
               ("IDR", "IDR cameras.npz", "IDR / VolSDF / NeRF-Art world_mat projections"),
               ("LLFF", "LLFF poses_bounds.npy", "LLFF poses (centred principal point)")],
        default="AUTO")
    placement: PointerProperty(type=bpy.types.Object, name="Placement", poll=_is_empty,
                               description="Empty that carries the capture: move, rotate and scale it (uniformly) "
                               "to place the captured head in the scene")
    cameras: PointerProperty(type=bpy.types.Collection, name="Capture Cameras",
                             description="Collection of the imported or generated capture cameras")
    show_photos: BoolProperty(name="Photos as Backgrounds", description="Show each capture photo as its "
                              "camera's background image", default=True)
    set_resolution: BoolProperty(name="Set Scene Resolution", description="On import, set the scene's render "
                                 "resolution to the capture's image size so the cameras frame exactly like the "
                                 "photos (off: the scene's resolution stays; a warning says when they differ)",
                                 default=False)
    set_active_camera: BoolProperty(name="Make Camera Active", description="On import, make the capture's first "
                                    "camera the scene's active camera (off: the active camera stays)",
                                    default=False)
    placement_mode: EnumProperty(
        name="Place", description="Where Import Capture puts the capture",
        items=[("CURSOR", "Upright at 3D Cursor", "The subject's centre (where the cameras look) at the 3D "
                "cursor, the cameras' mean up along +Z, facing the Front view, scaled to Subject Size"),
               ("AS_CAPTURED", "As Captured", "The capture's own position, orientation and scale (its world is "
                "the scene's)")],
        default="CURSOR")
    subject_size: FloatProperty(name="Subject Size", description="How big the captured subject is made when "
                                "placed at the 3D cursor (estimated from the cameras; a head is about 0.25 m)",
                                default=0.25, min=0.001, max=1e6, soft_max=100.0, subtype="DISTANCE")
    warnings: CollectionProperty(type=NERFART_PG_capture_warning, name="Warnings",
                                 description="What to know about the imported capture (replaced on each import)")
    ring_count: IntProperty(name="Cameras per Ring", description="Number of cameras on each ring", default=24,
                            min=3, max=256)
    ring_elevations: StringProperty(name="Ring Elevations", description="Elevation of each ring in degrees, "
                                    "separated by commas (one ring per value)", default="-10, 15, 40")
    ring_margin: FloatProperty(name="Margin", description="Extra space around the selection in each view (1 = "
                               "tight fit)", default=1.2, min=1.0, max=5.0)
    ring_lens: FloatProperty(name="Focal Length", description="Lens of the generated cameras (millimetres, "
                             "36 mm sensor)", default=50.0, min=5.0, max=500.0, unit="CAMERA")
    ring_width: IntProperty(name="Width", description="Width of each capture image in pixels", default=512,
                            min=32, max=4096, subtype="PIXEL")
    ring_height: IntProperty(name="Height", description="Height of each capture image in pixels", default=512,
                             min=32, max=4096, subtype="PIXEL")
    ring_samples: IntProperty(name="Samples", description="Cycles samples per capture image", default=64,
                              min=1, max=4096)
    ring_transparent: BoolProperty(name="Transparent Background", description="Render with a transparent "
                                   "background so the backend gets a matte", default=True)
    ring_output: StringProperty(name="Capture Output", description="Folder for the rendered capture (a "
                                "transforms.json and images); // is the .blend's folder",
                                default="//nerfart/capture/", subtype="DIR_PATH",
                           options=BLEND_RELATIVE)
    transfer: EnumProperty(
        name="Transfer", description="How the backend gets the capture",
        items=[("AUTO", "Automatic", "Pass the folder path to a backend on this machine, upload it otherwise"),
               ("PATH", "Path", "Pass the folder path: the backend can read this machine's disk"),
               ("UPLOAD", "Upload", "Send the capture as a zip (remote backends)")],
        default="AUTO")
    preset: EnumProperty(name="Quality", description="Reconstruction size preset", items=SIZE_PRESETS,
                         default="DEFAULT")
    steps: IntProperty(name="Steps", description="Training steps (0 = the preset's number)", default=0, min=0,
                       max=1_000_000)
    scale: FloatProperty(name="Image Scale", description="Resolution scale of the training images",
                         default=1.0, min=0.05, max=1.0, subtype="FACTOR")
    background: EnumProperty(
        name="Background", description="How the background is handled",
        items=[("AUTO", "Automatic", "Use mattes when the capture has them, else model the background"),
               ("MATTE", "Matte", "Use the capture's mattes (alpha or matte/ folder)"),
               ("CONTRACT", "Model Background", "Reconstruct the background too")],
        default="AUTO")
    holdout_every: IntProperty(name="Hold-out Every", description="Keep every n-th view out of training to "
                               "measure quality (0 = none)", default=8, min=0, max=1000)
    seed: IntProperty(name="Seed", description="Random seed", default=0, min=0, max=2**31 - 1)
    subject_shape: EnumProperty(name="Shape", description="The shape of the subject bounds: what lies inside is "
                                "the subject, the rest is background", items=SUBJECT_SHAPES,
                                get=_get_subject_shape, set=_set_subject_shape)
    subject_token: StringProperty(name="Subject Bounds Result", description="Which reconstruction result the "
                                  "subject bounds were last updated from (so that undo keeps them)", default="",
                                  options={"HIDDEN"})


SHAPE_FREEDOM_DESCRIPTION = (
    "How far the style may move the head's surface outwards, as a fraction of the head's radius. 0 keeps the "
    "reconstructed shape (only colours and detail change); 0.25 lets the outline grow by a quarter of the radius; "
    "0.5 leaves room for hair, a hat or horns. Above 0 the subject bounds grow by the same amount, and the "
    "stylization looks at the head from a little further back so there is room in the picture for what grows: "
    "fine detail is then a little coarser. More freedom lets a style change the shape, but may also leave a "
    "faint haze around the head or thin it where the style only asks for colour: above 0 this is still being "
    "tuned, so compare with a run at 0. Not used with Colour Only")


class NERFART_PG_queued_style(bpy.types.PropertyGroup):
    """One prompt of the batch queue."""

    __slots__ = ()

    name: StringProperty(name="Prompt", description="Target text of this stylization", default="")
    source_text: StringProperty(name="Source Text", description="What the capture shows now", default="photo")
    negative_prompts: StringProperty(name="Negative Prompts", description="Extra negative texts, separated by "
                                     "semicolons", default="")
    strength: FloatProperty(name="Strength", description="Style strength", default=0.5, min=0.0, max=1.0,
                            subtype="FACTOR")
    iterations: IntProperty(name="Iterations", description="Stylization iterations (0 = from strength)",
                            default=0, min=0, max=100_000)
    colour_only: BoolProperty(name="Colour Only", description="Keep the geometry exactly as reconstructed",
                              default=False)
    shape_freedom: FloatProperty(name="Shape Freedom", description=SHAPE_FREEDOM_DESCRIPTION, default=0.0,
                                 min=0.0, max=0.5, step=5, precision=2, subtype="FACTOR")
    clip_model: StringProperty(name="CLIP Model", description="open_clip model name", default="ViT-B-32")
    clip_pretrained: StringProperty(name="CLIP Weights", description="open_clip pretrained tag or checkpoint "
                                    "path on the backend (empty = the backend's default)", default="")
    job_id: StringProperty(name="Job ID", description="The job that ran this prompt", default="")
    state: StringProperty(name="State", description="State of that job", default="")


class NERFART_PG_stylize(bpy.types.PropertyGroup):
    """The text prompt and stylization settings, plus the batch queue."""

    __slots__ = ()

    prompt: StringProperty(name="Prompt", description="What the head should look like, e.g. 'a marble statue'",
                           default="painting, oil on canvas, Vincent van gogh self-portrait style")
    source_text: StringProperty(name="Source Text", description="What the capture shows now (the start of the "
                                "text direction)", default="photo")
    negative_prompts: StringProperty(name="Negative Prompts", description="Extra texts the result should not "
                                     "look like, separated by semicolons (added to the built-in list)",
                                     default="")
    strength: FloatProperty(name="Strength", description="Style strength, from subtle (0) to strong (1)",
                            default=0.5, min=0.0, max=1.0, subtype="FACTOR")
    iterations: IntProperty(name="Iterations", description="Stylization iterations (0 = chosen from the "
                            "strength)", default=0, min=0, max=100_000)
    colour_only: BoolProperty(name="Colour Only", description="Freeze the density: only colours change, the "
                              "geometry stays exactly as reconstructed", default=False)
    shape_freedom: FloatProperty(name="Shape Freedom", description=SHAPE_FREEDOM_DESCRIPTION, default=0.0,
                                 min=0.0, max=0.5, step=5, precision=2, subtype="FACTOR")
    clip_model: StringProperty(name="CLIP Model", description="open_clip model the style loss uses (the backend "
                               "lists the ones it has)", default="ViT-B-32")
    clip_pretrained: StringProperty(name="CLIP Weights", description="open_clip pretrained tag (e.g. openai) or "
                                    "a checkpoint path on the backend's disk; empty = the backend's default. "
                                    "'random' uses untrained weights: an explicit, unstyled test mode for "
                                    "checking a setup without downloading CLIP", default="")
    scale: FloatProperty(name="Image Scale", description="Resolution scale of the stylization views (0 = the "
                         "Quality preset's: Fast 0.25, Default 0.5, Quality 1, Tiny at most 48 pixels)",
                         default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    preset: EnumProperty(name="Quality", description="Stylization size preset", items=SIZE_PRESETS,
                         default="DEFAULT")
    seed: IntProperty(name="Seed", description="Random seed", default=0, min=0, max=2**31 - 1)
    queue: CollectionProperty(type=NERFART_PG_queued_style, name="Batch Queue",
                              description="Prompts to stylize one after another")
    queue_index: IntProperty(name="Queued Prompt", description="Selected prompt in the queue", default=0, min=0,
                             max=100_000)


class NERFART_PG_outputs(bpy.types.PropertyGroup):
    """What to render and where the frames and meshes go."""

    __slots__ = ()

    mode: EnumProperty(
        name="Cameras", description="Which cameras to render",
        items=[("ACTIVE", "Camera", "The scene camera over the frame range (keyframed motion, animated "
                "lens and cameras switched by timeline markers)"),
               ("RIG", "Rig", "Every camera in a collection")],
        default="ACTIVE")
    rig: PointerProperty(type=bpy.types.Collection, name="Rig", description="Collection whose cameras to render")
    rig_frames: EnumProperty(
        name="Rig Frames", description="Which frames a rig renders",
        items=[("CURRENT", "Current Frame", "Every rig camera once, at the current frame"),
               ("RANGE", "Frame Range", "Every rig camera at every frame of the range")],
        default="CURRENT")
    use_scene_range: BoolProperty(name="Scene Frame Range", description="Use the scene's start, end and step",
                                  default=True)
    frame_start: IntProperty(name="Start", description="First frame", default=1, min=-1_000_000, max=1_000_000)
    frame_end: IntProperty(name="End", description="Last frame", default=250, min=-1_000_000, max=1_000_000)
    frame_step: IntProperty(name="Step", description="Frames to advance between renders", default=1, min=1,
                            max=10_000)
    output_dir: StringProperty(name="Output Folder", description="Where frames are written, one sub-folder per "
                               "job; // is the .blend's folder", default="//nerfart/renders/", subtype="DIR_PATH",
                           options=BLEND_RELATIVE)
    file_format: EnumProperty(
        name="Format", description="Frame file format",
        items=[("PNG", "PNG", "8-bit sRGB PNG with alpha"),
               ("EXR", "OpenEXR Multilayer", "Colour, depth and normals: float multilayer EXR with "
                "Blender's passes for compositing, Combined (linear, premultiplied alpha), Depth (Z in scene "
                "units, for Z Combine) and Normal (world space)")],
        default="PNG")
    include_background: BoolProperty(name="Background", description="Off: the subject alone on transparent; On: "
                                     "the captured background too, where the capture modelled it", default=False)
    open_sequence: BoolProperty(name="Load Frames", description="Show the frames as they arrive as the "
                                "background image sequence of the camera they were rendered from (a rig: each "
                                "camera its own), in front of the scene, synced to the frames", default=True)
    batch_rigs: PointerProperty(type=bpy.types.Collection, name="Rigs", description="Collection holding the "
                                "camera rigs of a batch: each child collection with cameras is one rig (or this "
                                "collection is the only rig when it holds the cameras itself)")
    batch_summary: StringProperty(name="Last Batch Summary", description="The summary table the last batch wrote",
                                  default="", subtype="FILE_PATH", options=BLEND_RELATIVE)
    mesh_resolution: IntProperty(name="Resolution", description="Marching-cubes grid resolution per axis",
                                 default=256, min=16, max=1024)
    mesh_decimate: FloatProperty(name="Decimate", description="Vertex Colours: fraction of faces to keep "
                                 "(1 = no decimation); a textured mesh is decimated to Faces instead",
                                 default=1.0, min=0.01, max=1.0, subtype="FACTOR")
    mesh_format: EnumProperty(name="Format", description="What Extract Mesh brings in", items=[
        ("GLB", "Textured (GLB)", "Decimated, UV-unwrapped mesh with the colours baked into an image texture, "
         "imported with Blender's glTF importer (the .glb stays in the output folder's meshes/)"),
        ("PLY", "Vertex Colours", "Every marching-cubes vertex with its colour (heavy; colours only as fine as "
         "the vertices)")], default="GLB")
    mesh_texture_size: EnumProperty(name="Texture", description="Baked texture width and height", items=[
        ("512", "0.5K", "512 x 512 (a small or preview mesh)"), ("1024", "1K", "1024 x 1024"), ("2048", "2K", "2048 x 2048"), ("4096", "4K", "4096 x 4096")],
        default="2048")
    mesh_target_faces: IntProperty(name="Faces", description="Triangles to decimate to before unwrapping (0 = "
                                   "auto: meshes above 40000 faces are reduced to 40000; -1 = keep all)",
                                   default=0, min=-1, max=10_000_000)
    mesh_keep_largest: BoolProperty(name="Largest Part Only", description="Drop every disconnected piece but "
                                    "the largest", default=True)
    mesh_show_colours: BoolProperty(name="Colours in Solid View", description="When the mesh arrives, make the "
                                    "3D views' Solid shading show its vertex colours (Viewport Shading ▸ Color ▸ "
                                    "Attribute)", default=True)


class NERFART_PG_settings(bpy.types.PropertyGroup):
    """All NeRF-Art settings of a scene (``Scene.nerfart``)."""

    __slots__ = ()

    backend: PointerProperty(type=NERFART_PG_backend, name="Backend", description="Backend jobs")
    capture: PointerProperty(type=NERFART_PG_capture, name="Capture", description="Capture settings")
    stylize: PointerProperty(type=NERFART_PG_stylize, name="Stylize", description="Stylization settings")
    outputs: PointerProperty(type=NERFART_PG_outputs, name="Outputs", description="Render and mesh settings")


class NERFART_PG_runtime(bpy.types.PropertyGroup):
    """Live connection and job state for drawing (``WindowManager.nerfart_runtime``; not saved)."""

    __slots__ = ()

    connection: EnumProperty(
        name="Connection", description="State of the connection to the backend",
        items=[(s, s.title(), f"The backend connection is {s.lower()}") for s in CONNECTION_STATES],
        default="DISCONNECTED")
    status_text: StringProperty(name="Status", description="Connection status", default="not connected")
    backend_version: StringProperty(name="Backend Version", description="Version of the backend", default="")
    gpu_name: StringProperty(name="GPU", description="The backend's compute device", default="")
    gpu_memory: StringProperty(name="GPU Memory", description="Free and total GPU memory", default="")
    queue_length: IntProperty(name="Queue", description="This Blender's jobs queued or running on the backend", default=0,
                              min=0, max=1_000_000)
    clip_models: StringProperty(name="CLIP Models", description="CLIP models the backend offers", default="")
    busy: BoolProperty(name="Busy", description="A job of this session is running", default=False)
    job_text: StringProperty(name="Job", description="What the running job is doing", default="")
    progress: FloatProperty(name="Progress", description="Progress of the current stage", default=0.0, min=0.0,
                            max=1.0, subtype="FACTOR")
    current_job_id: StringProperty(name="Current Job", description="Id of the job shown in the progress bar",
                                   default="")
    job_result: StringProperty(name="Result So Far", description="PSNR or losses of the running job",
                               default="")
    job_warning: StringProperty(name="Job Warning", description="What to know about the running job's result",
                                default="")
    batch_text: StringProperty(name="Batch", description="Progress of the running batch", default="")
    error: StringProperty(name="Error", description="The last error, in words", default="")
    error_detail: StringProperty(name="Details", description="Error code or backend trace", default="")
    show_error_detail: BoolProperty(name="Show Details", description="Show the whole error message, its code "
                                    "and what to do", default=False)
    show_job_error: BoolProperty(name="Show Details", description="Show the selected job's whole error message, "
                                 "its code and what to do", default=False)
    preview: PointerProperty(type=bpy.types.Image, name="Preview", description="Latest preview from the backend")
    local_backend: StringProperty(name="Local Backend", description="State of the local backend process",
                                  default="")
    reattach_pending: IntProperty(name="Jobs to Reattach", description="Jobs of this file that may still be on "
                                  "the backend", default=0, min=0, max=100_000)


CLASSES = (
    NERFART_PG_job,
    NERFART_PG_backend,
    NERFART_PG_capture_warning,
    NERFART_PG_capture,
    NERFART_PG_queued_style,
    NERFART_PG_stylize,
    NERFART_PG_outputs,
    NERFART_PG_settings,
    NERFART_PG_runtime,
)
