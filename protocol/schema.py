"""Protocol v2 message schema: every message type and every field, typed and documented in one place.

``SPEC.md`` beside this file is the prose; its field tables are generated from the definitions below
(:func:`schema_markdown`) and a test keeps the two identical.

A message's *content* is a JSON object. Binary payloads never go into JSON: a field of kind ``array`` or
``blob`` holds a small *spec* naming a raw frame by index (see :mod:`protocol.framing`). Unknown extra
content fields are ignored (forward compatibility); unknown job parameters are rejected (they are typos), at
every level: a job's parameters are stored with it and shown back to every client, so nothing unchecked may
hide in them (changed in v2: unknown fields of a camera were ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 2

# Field kinds. "array" and "blob" are specs that point at binary frames (see framing.py).
KINDS = ("str", "int", "float", "bool", "dict", "list", "str_list", "float_map", "matrix4", "array", "blob", "any")
ARRAY_DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64")
BLOB_FORMATS = ("png", "exr", "ply", "glb", "npz", "jpg", "json", "zip", "bin")
JOB_KINDS = ("reconstruct", "stylize", "render", "extract_mesh")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")

MAX_STR = 4096  # longest plain string field (prompts are far shorter; paths fit)
MAX_LIST = 100_000  # longest list (a camera list for a 4000-frame shot with rigs fits)


@dataclass(frozen=True)
class Field:
    """One content field.

    Attributes:
        name: JSON key.
        kind: one of :data:`KINDS`.
        doc: what it means, for SPEC.md.
        required: whether it must be present.
        nullable: whether JSON null is allowed.
        choices: allowed values for ``str`` and ``int`` fields.
        min, max: inclusive bounds for ``int`` / ``float`` fields, or list length bounds.
        item: a nested schema (tuple of Fields) for ``dict`` fields, or for the items of ``list`` fields.
    """

    name: str
    kind: str
    doc: str
    required: bool = True
    nullable: bool = False
    choices: tuple[str, ...] | tuple[int, ...] | None = None
    min: float | None = None
    max: float | None = None
    item: tuple[Field, ...] | None = None


@dataclass(frozen=True)
class MessageSpec:
    """A message type: its name, direction, purpose, and content fields."""

    type: str
    direction: str  # "client->server", "server->client" or "both"
    doc: str
    fields: tuple[Field, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------------------
# Shared nested shapes
# ---------------------------------------------------------------------------------------------------------

CAMERA = (
    Field("name", "str", "Camera name (Blender object name or image stem); names the output frame."),
    Field("frame", "int", "Blender frame number this camera pose belongs to.", required=False, min=-1_000_000,
          max=1_000_000),
    Field("c2w", "matrix4", "4x4 camera-to-world matrix, row-major list of 4 rows, OpenCV axes (+X right, +Y "
          "down, +Z forward), in the capture's world coordinates."),
    Field("fx", "float", "Focal length along x in pixels.", min=1e-6, max=1e9),
    Field("fy", "float", "Focal length along y in pixels.", min=1e-6, max=1e9),
    Field("cx", "float", "Principal point x in pixels; the top-left pixel's centre is (0.5, 0.5).", min=-1e7,
          max=1e7),
    Field("cy", "float", "Principal point y in pixels.", min=-1e7, max=1e7),
    Field("width", "int", "Image width in pixels.", min=1, max=16384),
    Field("height", "int", "Image height in pixels.", min=1, max=16384),
    Field("time", "float", "Scene time in seconds (frame / fps), for reference.", required=False),
    Field("clip_start", "float", "Blender's near clip distance, capture-world units.", required=False, min=0),
    Field("clip_end", "float", "Blender's far clip distance, capture-world units.", required=False, min=0),
)

SUBJECT_BOUNDS = (
    Field("shape", "str", "'box' (the cube [-1, 1]^3) or 'ellipsoid' (the unit sphere), mapped by 'matrix'.",
          choices=("box", "ellipsoid")),
    Field("matrix", "matrix4", "Affine map from the unit shape to capture-world coordinates (the cameras' frame; "
          "row-major, last row 0 0 0 1, invertible): a Blender empty's matrix_world (display size 1) after the "
          "inverse of the capture's placement."),
)

GPU = (
    Field("name", "str", "Device name, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."),
    Field("memory_total", "int", "Total device memory in bytes (0 for the CPU).", min=0),
    Field("memory_free", "int", "Free device memory in bytes right now.", min=0),
)

JOB_INFO = (
    Field("job_id", "str", "Job id."),
    Field("kind", "str", "Job kind.", choices=JOB_KINDS),
    Field("state", "str", "Job state.", choices=JOB_STATES),
    Field("created", "float", "Unix time the job was accepted."),
    Field("started", "float", "Unix time it started running.", nullable=True, required=False),
    Field("finished", "float", "Unix time it reached a final state.", nullable=True, required=False),
    Field("position", "int", "Place in the queue (0 = next), or -1 when not queued.", required=False),
    Field("stage", "str", "Last reported stage.", required=False),
    Field("step", "int", "Last reported step.", required=False, min=0),
    Field("total", "int", "Total steps of that stage.", required=False, min=0),
    Field("params", "dict", "The parameters it was submitted with.", required=False),
    Field("outputs", "dict", "Outputs so far (file names in the job directory, metrics).", required=False),
    Field("error", "dict", "Error {code, message} if it failed.", required=False, nullable=True),
    Field("resumes", "int", "Times it was resumed after an interruption.", required=False, min=0),
)

ERROR_INFO = (
    Field("code", "str", "Error code (see errors.py)."),
    Field("message", "str", "Readable explanation."),
)

# ---------------------------------------------------------------------------------------------------------
# Job parameters, per kind (submit.params)
# ---------------------------------------------------------------------------------------------------------

JOB_PARAMS: dict[str, tuple[Field, ...]] = {
    "reconstruct": (
        Field("capture_path", "str", "Capture folder or file on the backend's disk. Either this or an uploaded "
              "'capture' zip in submit.inputs.", required=False),
        Field("capture_format", "str", "Force a reader instead of auto-detection.", required=False,
              choices=("transforms_json", "colmap", "idr", "llff")),
        Field("steps", "int", "Training steps (default: the backend's preset).", required=False, min=1,
              max=1_000_000),
        Field("time_budget_s", "float", "Stop after this many seconds of training.", required=False, min=1,
              max=86_400),
        Field("scale", "float", "Image resolution scale used for training (0.5 = half).", required=False,
              min=0.01, max=1.0),
        Field("holdout_every", "int", "Hold out every k-th view for PSNR (0 = none).", required=False, min=0,
              max=1000),
        Field("background", "str", "'auto' uses mattes when the capture has them, else models the background.",
              required=False, choices=("auto", "matte", "contract")),
        Field("subject_bounds", "dict", "The subject (head and shoulders): what lies inside is the subject, the "
              "rest is background. Absent: found from the capture (where the cameras look, refined by the reconstructed density); the job's outputs hold the bounds it used.", required=False, item=SUBJECT_BOUNDS),
        Field("preset", "str", "Size preset.", required=False, choices=("tiny", "fast", "default", "quality")),
        Field("seed", "int", "Random seed.", required=False, min=0, max=2**31 - 1),
    ),
    "stylize": (
        Field("source_job", "str", "The reconstruct job whose checkpoint is F_rec."),
        Field("prompt", "str", "Target text, e.g. 'a marble statue'."),
        Field("source_text", "str", "Source text of the directional loss (default 'photo').", required=False),
        Field("negative_prompts", "str_list", "Extra negative texts, added to the built-in bank.",
              required=False, max=256),
        Field("strength", "float", "Style strength, 0 (subtle) to 1 (strong).", required=False, min=0, max=1),
        Field("iterations", "int", "Stylization iterations (default from strength).", required=False, min=1,
              max=100_000),
        Field("colour_only", "bool", "Freeze density: geometry stays exactly as reconstructed.",
              required=False),
        Field("shape_freedom", "float", "Shape freedom: how far the stylized surface may move outwards, in head "
              "radii (the reconstruction's unit: the radius of the region of interest the capture was normalised "
              "to); 0 (default) keeps the head's shape, 0.25 lets a style add a quarter of that radius around it, "
              "0.5 leaves room for a hat or horns, with faster shape learning, the weight regularization and an "
              "opacity prior (against haze) on. Shape grows only inside the subject bounds. Ignored with "
              "colour_only.",
              required=False, min=0, max=0.5),
        Field("clip_model", "str", "open_clip model name (default ViT-B-32).", required=False),
        Field("clip_pretrained", "str", "open_clip pretrained tag, a local checkpoint path, or 'random' "
              "(explicitly unstyled test mode).", required=False),
        Field("scale", "float", "Image scale for stylization views.", required=False, min=0.01, max=1.0),
        Field("preset", "str", "Size preset.", required=False, choices=("tiny", "fast", "default", "quality")),
        Field("subject_bounds", "dict", "The subject (head and shoulders): what lies inside is the subject, the "
              "rest is background. Absent: the source reconstruction's. Only the subject is stylized; the background keeps its reconstructed look.", required=False, item=SUBJECT_BOUNDS),
        Field("seed", "int", "Random seed.", required=False, min=0, max=2**31 - 1),
    ),
    "render": (
        Field("source_job", "str", "The reconstruct or stylize job whose checkpoint renders."),
        Field("cameras", "list", "Cameras to render, in order.", min=1, max=MAX_LIST, item=CAMERA),
        Field("format", "str", "Frame format: png (8-bit sRGB, straight alpha; the default), png16, or exr: "
              "multilayer OpenEXR, float32, with Blender's passes ViewLayer.Combined (R, G, B, A: scene-linear, "
              "premultiplied), ViewLayer.Depth (Z: distance along the camera's view axis in scene units, 1e10 "
              "where the pixel is mostly empty, as Cycles writes) and ViewLayer.Normal (X, Y, Z: world-space "
              "normals in scene axes, times coverage).", required=False, choices=("png", "png16", "exr")),
        Field("depth", "bool", "Also return the Depth pass (as in exr) as a float32 array per frame.",
              required=False),
        Field("placement", "matrix4", "matrix_world of the capture's placement empty: maps capture-world "
              "coordinates (the cameras') into the scene (a rotation, translation and one uniform scale). "
              "Depth is given in scene units (times its scale) and normals in scene axes; identity if absent.",
              required=False),
        Field("subject_bounds", "dict", "The subject (head and shoulders): what lies inside is the subject, the "
              "rest is background. Absent: the source reconstruction's.", required=False, item=SUBJECT_BOUNDS),
        Field("include_background", "bool", "Also render the background outside the subject bounds (opaque "
              "frames where the capture modelled it); default false: the subject alone, with alpha.",
              required=False),
    ),
    "extract_mesh": (
        Field("source_job", "str", "The reconstruct or stylize job whose checkpoint is meshed."),
        Field("resolution", "int", "Grid cells along the longest side of the meshed box (the subject bounds' "
              "axis-aligned box; cubic voxels).", required=False, min=16, max=1024),
        Field("isolevel", "float", "Density isolevel (default: the documented rule).", required=False,
              nullable=True, min=0, max=1e6),
        Field("keep_largest_only", "bool", "Drop every component but the largest.", required=False),
        Field("mesh_format", "str", "'glb': decimated, UV-unwrapped mesh with a baked colour texture embedded; "
              "'ply' (default): every marching-cubes vertex with its colour.", required=False,
              choices=("glb", "ply")),
        Field("texture_size", "int", "Texture width and height in texels for 'glb' (default 2048).",
              required=False, choices=(512, 1024, 2048, 4096)),
        Field("target_faces", "int", "Triangles to decimate to before unwrapping ('glb'): 0 (default) = auto "
              "(meshes above 40000 faces are reduced to 40000), -1 = keep every face.", required=False,
              min=-1, max=10_000_000),
        Field("subject_bounds", "dict", "The subject (head and shoulders): what lies inside is the subject, the "
              "rest is background. Absent: the source reconstruction's. The mesh holds what lies inside them.", required=False, item=SUBJECT_BOUNDS),
    ),
}

# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------

MESSAGES: dict[str, MessageSpec] = {
    spec.type: spec
    for spec in (
        MessageSpec("hello", "client->server", "First message of a client: checks versions, asks capabilities.", (
            Field("protocol_version", "int", "The client's PROTOCOL_VERSION.", min=0),
            Field("client", "str", "Client name, e.g. 'blender 4.2.3 / nerfart_blender 0.1.0'."),
        )),
        MessageSpec("hello_reply", "server->client", "Capabilities of the backend.", (
            Field("protocol_version", "int", "The server's PROTOCOL_VERSION."),
            Field("backend_version", "str", "Backend package version."),
            Field("session", "str", "Random id of this server process; changes on restart."),
            Field("gpu", "dict", "The compute device, or null if torch is unavailable.", nullable=True, item=GPU),
            Field("clip_models", "str_list", "CLIP model names the stylization job accepts."),
            Field("job_kinds", "str_list", "Job kinds this backend runs."),
            Field("queue_length", "int", "Jobs queued or running right now.", min=0),
            Field("limits", "dict", "Limits: max_message_bytes, max_queued_jobs_per_client, "
                  "max_queued_jobs_per_host (all the clients of one host together), and the work dir's "
                  "disk: work_dir_quota_bytes and work_dir_used_bytes (both null without a quota), disk_free_bytes, "
                  "min_free_bytes (kept free for the system) and writable (false while the quota or the disk is "
                  "full: status and attach answer, new jobs are refused with 'disk_full').", required=False),
        )),
        MessageSpec("submit", "client->server", "Queue a job. Answered by 'accepted' or 'error'.", (
            Field("kind", "str", "Job kind.", choices=JOB_KINDS),
            Field("params", "dict", "Kind-specific parameters (see 'Job parameters')."),
            Field("inputs", "dict", "Named binary inputs, each a blob spec (e.g. 'capture': a zip).",
                  required=False),
        )),
        MessageSpec("accepted", "server->client", "A job was queued.", (
            Field("job_id", "str", "The new job's id."),
            Field("kind", "str", "Its kind.", choices=JOB_KINDS),
            Field("position", "int", "Its place in the queue (0 = runs next).", min=0),
        )),
        MessageSpec("progress", "server->client", "Progress of a running job.", (
            Field("job_id", "str", "Job id."),
            Field("stage", "str", "Stage name, e.g. 'loading', 'training', 'stylizing', 'rendering'."),
            Field("step", "int", "Steps done in this stage.", min=0),
            Field("total", "int", "Steps in this stage (0 if unknown).", min=0),
            Field("eta_s", "float", "Estimated seconds left in this stage.", nullable=True, required=False),
            Field("losses", "float_map", "Current loss values by name.", required=False),
            Field("metrics", "float_map", "Metrics by name (psnr, heldout_psnr, ...).", required=False),
            Field("preview", "blob", "A small preview image.", required=False, nullable=True),
            Field("message", "str", "A line for a person.", required=False),
        )),
        MessageSpec("frame", "server->client", "One rendered frame of a render job.", (
            Field("job_id", "str", "Job id."),
            Field("index", "int", "Index in the submitted camera list.", min=0),
            Field("camera_name", "str", "The camera's name."),
            Field("frame", "int", "The camera's frame number.", required=False, min=-1_000_000, max=1_000_000),
            Field("width", "int", "Width in pixels.", min=1),
            Field("height", "int", "Height in pixels.", min=1),
            Field("image", "blob", "The image file bytes: PNG (RGBA, straight alpha) or multilayer EXR (see "
                  "the render job's format)."),
            Field("depth", "array", "float32 (height, width) Depth pass: distance along the optical axis in "
                  "scene units (see the render job's placement), 1e10 where the pixel is mostly empty.",
                  required=False, nullable=True),
            Field("file", "str", "File name in the job's output folder.", required=False),
        )),
        MessageSpec("mesh", "server->client", "The mesh of an extract_mesh job, in capture-world coordinates.", (
            Field("job_id", "str", "Job id."),
            Field("vertices", "array", "float32 (n_vertices, 3); absent for 'glb'.", required=False),
            Field("faces", "array", "int32 (n_faces, 3) vertex indices; absent for 'glb'.", required=False),
            Field("colors", "array", "uint8 (n_vertices, 4) sRGB RGBA; absent for 'glb'.", required=False),
            Field("file", "str", "File name (PLY or GLB) in the job's output folder.", required=False),
            Field("format", "str", "'ply' (the arrays) or 'glb' (the file's bytes in glb).", required=False,
                  choices=("glb", "ply")),
            Field("glb", "blob", "The GLB file (Y-up glTF, texture embedded) when format is 'glb'.",
                  required=False),
        )),
        MessageSpec("result", "server->client", "A job reached a final state.", (
            Field("job_id", "str", "Job id."),
            Field("state", "str", "Final state.", choices=FINAL_STATES),
            Field("outputs", "dict", "Outputs: file names in the job folder, metrics, timings."),
            Field("error", "dict", "Why it failed, if it did.", required=False, nullable=True, item=ERROR_INFO),
        )),
        MessageSpec("error", "server->client", "A request could not be served.", (
            Field("code", "str", "Error code (see errors.py)."),
            Field("message", "str", "Readable explanation, naming the field or file at fault."),
            Field("field", "str", "Dotted path of the field at fault.", required=False, nullable=True),
            Field("job_id", "str", "Job concerned, if any.", required=False, nullable=True),
        )),
        MessageSpec("cancel", "client->server", "Cancel a queued or running job.", (
            Field("job_id", "str", "Job id."),
        )),
        MessageSpec("cancel_reply", "server->client", "The job's state after the cancel request.", (
            Field("job_id", "str", "Job id."),
            Field("state", "str", "State now ('cancelled', or 'running' until the next step boundary).",
                  choices=JOB_STATES),
        )),
        MessageSpec("resume", "client->server",
                    "Queue an interrupted job (one that was running when the backend stopped or crashed) again, "
                    "under the same id and folder. Reconstruct and stylize jobs continue from their latest periodic "
                    "checkpoint, so their progress continues from there and they end at the step or iteration "
                    "count they were submitted with; without a checkpoint they start from the beginning and their "
                    "progress message and outputs ('resume_note') say so. Other kinds run again from the start. "
                    "Answered by 'accepted' (the same job id), or 'error' with code 'bad_state' for a job that is "
                    "not interrupted. The job's messages go to the client that resumed it.", (
                        Field("job_id", "str", "The interrupted job."),
                    )),
        MessageSpec("status", "client->server", "Ask for one job or for all jobs this client may see.", (
            Field("job_id", "str", "One job, or null for all.", required=False, nullable=True),
        )),
        MessageSpec("status_reply", "server->client", "Job states.", (
            Field("jobs", "list", "Job records, newest last: whole for one job, summaries (no params; outputs' "
                  "plain values only) for all jobs.", max=MAX_LIST, item=JOB_INFO),
        )),
        MessageSpec("attach", "client->server",
                    "Route a job's further messages to this client (e.g. after reopening a .blend); the server "
                    "answers with status_reply and, for finished jobs, re-sends its result.", (
                        Field("job_id", "str", "Job id."),
                    )),
        MessageSpec("heartbeat", "both", "Liveness. A client sends one about every second when otherwise "
                    "idle; the server answers each with one.", ()),
    )
}

# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def validate_content(msg_type: str, content: Any) -> None:
    """Check a message's content against its schema.

    Raises:
        ProtocolError: ``unknown_type`` for an unknown type, ``invalid_field`` naming the field otherwise.
    """
    spec = MESSAGES.get(msg_type)
    if spec is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {msg_type!r}; "
                            f"protocol v{PROTOCOL_VERSION} knows {', '.join(sorted(MESSAGES))}", "msg_type")
    _check_object(content, spec.fields, "")
    if msg_type == "submit":
        validate_params(content["kind"], content["params"])


def validate_params(kind: str, params: Any) -> None:
    """Check job parameters; unknown names are rejected so that a typo never silently does nothing."""
    fields = JOB_PARAMS.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"unknown job kind {kind!r}", "kind")
    if not isinstance(params, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'params' must be an object", "params")
    known = {f.name for f in fields}
    for key in params:
        if key not in known:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"unknown parameter 'params.{str(key)[:100]}' for a {kind} "
                                f"job; known: {', '.join(sorted(known))}", f"params.{str(key)[:100]}")
    _check_object(params, fields, "params.", strict=True)


def _check_object(obj: Any, fields: tuple[Field, ...], prefix: str, strict: bool = False) -> None:
    """Check ``obj``'s fields; ``strict`` also refuses names the schema does not know, here and below."""
    if not isinstance(obj, dict):
        name = prefix.rstrip(".") or "content"
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{name!r} must be a JSON object, got {_typename(obj)}",
                            name)
    if strict:
        known = {f.name for f in fields}
        for key in obj:
            if key not in known:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"unknown field {prefix + str(key)[:100]!r}; known: "
                                    f"{', '.join(sorted(known))}", prefix + str(key)[:100])
    for f in fields:
        path = prefix + f.name
        if f.name not in obj:
            if f.required:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"missing required field {path!r}", path)
            continue
        _check_value(obj[f.name], f, path, strict)


def _check_value(value: Any, f: Field, path: str, strict: bool = False) -> None:
    def bad(why: str) -> ProtocolError:
        return ProtocolError(ErrorCode.INVALID_FIELD, f"field {path!r} {why}", path)

    if value is None:
        if f.nullable:
            return
        raise bad("must not be null")
    kind = f.kind
    if kind == "any":
        return
    if kind == "str":
        if not isinstance(value, str):
            raise bad(f"must be a string, got {_typename(value)}")
        if len(value) > MAX_STR:
            raise bad(f"is longer than {MAX_STR} characters")
        if f.choices is not None and value not in f.choices:
            raise bad(f"must be one of {', '.join(f.choices)}; got {value[:60]!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"must be an integer, got {_typename(value)}")
        if f.choices is not None and value not in f.choices:
            raise bad(f"must be one of {', '.join(map(str, f.choices))}; got {value}")
        _check_range(value, f, bad)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"must be a number, got {_typename(value)}")
        if not math.isfinite(value):
            raise bad("must be finite")
        _check_range(value, f, bad)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {_typename(value)}")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise bad(f"must be an object, got {_typename(value)}")
        if f.item is not None:
            _check_object(value, f.item, path + ".", strict)
    elif kind in ("list", "str_list"):
        if not isinstance(value, list):
            raise bad(f"must be a list, got {_typename(value)}")
        lo = 0 if f.min is None else f.min
        hi = MAX_LIST if f.max is None else f.max
        if not lo <= len(value) <= hi:
            raise bad(f"must have between {int(lo)} and {int(hi)} items, got {len(value)}")
        for i, item in enumerate(value):
            if kind == "str_list":
                if not isinstance(item, str) or len(item) > MAX_STR:
                    raise bad(f"item {i} must be a string of at most {MAX_STR} characters")
            elif f.item is not None:
                _check_object(item, f.item, f"{path}[{i}].", strict)
    elif kind == "float_map":
        if not isinstance(value, dict):
            raise bad(f"must be an object of numbers, got {_typename(value)}")
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise bad(f"entry {k!r} must be a number, got {_typename(v)}")
    elif kind == "matrix4":
        _check_matrix4(value, bad)
    elif kind == "array":
        check_array_spec(value, path)
    elif kind == "blob":
        check_blob_spec(value, path)
    else:  # pragma: no cover - a schema bug, caught by the schema self-test
        raise ValueError(f"schema field {path} has unknown kind {kind!r}")


def _check_range(value: float, f: Field, bad: Any) -> None:
    if f.min is not None and value < f.min:
        raise bad(f"must be at least {f.min}, got {value}")
    if f.max is not None and value > f.max:
        raise bad(f"must be at most {f.max}, got {value}")


def _check_matrix4(value: Any, bad: Any) -> None:
    if not isinstance(value, list) or len(value) != 4:
        raise bad("must be 4 rows of 4 numbers")
    for row in value:
        if not isinstance(row, list) or len(row) != 4:
            raise bad("must be 4 rows of 4 numbers")
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise bad("must hold finite numbers only")


def check_array_spec(spec: Any, path: str) -> None:
    """An array spec is ``{"buffer": int, "dtype": str, "shape": [int, ...]}`` (C order, little-endian)."""
    if not isinstance(spec, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field {path!r} must be an array spec object", path)
    buf = spec.get("buffer")
    if isinstance(buf, bool) or not isinstance(buf, int) or buf < 0:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}.buffer' must be a frame index >= 0",
                            f"{path}.buffer")
    if spec.get("dtype") not in ARRAY_DTYPES:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}.dtype' must be one of "
                            f"{', '.join(ARRAY_DTYPES)}, got {spec.get('dtype')!r}", f"{path}.dtype")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) > 8
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape)):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}.shape' must be a list of at most 8 "
                            "non-negative integers", f"{path}.shape")


def check_blob_spec(spec: Any, path: str) -> None:
    """A blob spec is ``{"buffer": int, "format": str}``: opaque file bytes (PNG, EXR, PLY, zip...)."""
    if not isinstance(spec, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field {path!r} must be a blob spec object", path)
    buf = spec.get("buffer")
    if isinstance(buf, bool) or not isinstance(buf, int) or buf < 0:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}.buffer' must be a frame index >= 0",
                            f"{path}.buffer")
    if spec.get("format") not in BLOB_FORMATS:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field '{path}.format' must be one of "
                            f"{', '.join(BLOB_FORMATS)}, got {spec.get('format')!r}", f"{path}.format")


def _typename(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------------------
# Documentation
# ---------------------------------------------------------------------------------------------------------


def schema_markdown() -> str:
    """The field tables of SPEC.md, generated from the definitions above."""
    out = ["## Messages", ""]
    for spec in MESSAGES.values():
        out += [f"### `{spec.type}` ({spec.direction})", "", spec.doc, ""]
        out += _fields_table(spec.fields)
    out += ["## Job parameters (`submit.params`)", ""]
    for kind, fields in JOB_PARAMS.items():
        out += [f"### `{kind}`", ""]
        out += _fields_table(fields)
    for title, fields in (("Camera (`render.params.cameras[i]`)", CAMERA),
                          ("Subject bounds (`params.subject_bounds` of every job kind)", SUBJECT_BOUNDS),
                          ("GPU (`hello_reply.gpu`)", GPU),
                          ("Job record (`status_reply.jobs[i]`)", JOB_INFO)):
        out += [f"## {title}", ""]
        out += _fields_table(fields)
    return "\n".join(out).rstrip() + "\n"


def _fields_table(fields: tuple[Field, ...]) -> list[str]:
    if not fields:
        return ["No fields.", ""]
    rows = ["| field | kind | required | meaning |", "| --- | --- | --- | --- |"]
    for f in fields:
        kind = f.kind + (" or null" if f.nullable else "")
        extra = []
        if f.choices:
            extra.append("one of " + ", ".join(f"`{c}`" for c in f.choices))
        if f.min is not None or f.max is not None:
            extra.append(f"range [{_num(f.min)}, {_num(f.max)}]")
        doc = f.doc + (" (" + "; ".join(extra) + ")" if extra else "")
        rows.append(f"| `{f.name}` | {kind} | {'yes' if f.required else 'no'} | {doc} |")
    return [*rows, ""]


def _num(x: float | None) -> str:
    if x is None:
        return "…"
    return str(int(x)) if float(x).is_integer() else str(x)
