"""Drive the whole workflow through the Blender add-on's own operators, in this process (``bpy``), against a
backend process on loopback.

The add-on is enabled from this checkout exactly as its zip would install it (``build_addon.stage``), its
preferences are set to start a local backend (``python -m backend serve`` on a free loopback port, with the
work dir under the output folder), and then the operators a person would press run one after another: Start
Local Backend, Capture from Scene (or Import Capture), Reconstruct, Stylize, Render Frames (a turntable
camera), Extract Mesh. In background mode each operator blocks until its job is done. The figures for the
report are read from what the add-on keeps: the scene's job list and the session's per-job state (the
backend's ``result`` outputs and last progress losses / metrics).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import report as report_mod
from .profiles import DEFAULT_PROMPT, Profile, choose
from .progress import OperatorProgress, quiet_fds
from .scene import SUBJECT_BOUNDS, SUBJECT_COLLECTION, build_head
from .turntable import Orbit, add_turntable_camera

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON_MODULE = "nerfart_blender"  # the package name inside the add-on's zip
MARKER_FILE = ".nerfart-demo"  # marks an output folder as the demo's, so a re-run may clear it
# What a re-run of the demo removes from its own output folder (nothing else is touched).
OWN_ENTRIES = ("scene.blend", "scene.blend1", "frames", "renders", "capture", "work", "logs", "mesh.ply",
               "mesh.glb", "meshes", "contact_sheet.png", "turntable.gif", "report.json")
# The message of backend.stylize.weights.WeightsUnavailableError always has both phrases; the backend sends it
# verbatim as the failed job's error, which is how the add-on (and so the demo) sees it.
WEIGHTS_MISSING_PHRASES = ("are not available:", "Provide them in one of three ways")
BACKEND_STOP_TIMEOUT_S = 30.0
FPS = 24
EMBEDDED_TURNTABLE_DISTANCE = 0.8  # turntable distance relative to the capture ring's, for the embedded head


class DemoError(Exception):
    """A failure the user can act on; the message says what happened and what to do."""


@dataclass
class DemoOptions:
    """The command line's choices (``python -m backend demo --help``)."""

    out: Path
    size: str = "auto"
    capture: Path | None = None
    prompt: str = DEFAULT_PROMPT
    clip_pretrained: str = ""  # "" = the backend's default (open_clip ViT-B-32 / openai)
    device: str = "auto"
    port: int = 0  # 0: a free port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detect_cuda() -> bool:
    """Whether torch sees a CUDA GPU here (the backend runs on this machine, so this is its device)."""
    try:
        import torch
    except ImportError:
        raise DemoError("torch is not installed in this Python; run `bash scripts/bootstrap.sh` (or "
                        "`bash scripts/main.sh`, which calls it) to create .venv with the pinned requirements") \
            from None
    return bool(torch.cuda.is_available())


def prepare_out_dir(out: Path) -> None:
    """Create the output folder; a previous demo's outputs in it are replaced, anything else is refused."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER_FILE).is_file():
            raise DemoError(f"--out {out} is not empty and was not written by the demo; choose a new or empty "
                            "folder")
        for name in OWN_ENTRIES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text("Written by `python -m backend demo`; a re-run replaces its outputs here.\n")


def is_weights_error(text: str) -> bool:
    return all(phrase in text for phrase in WEIGHTS_MISSING_PHRASES)


class Interrupts:
    """While the demo runs, SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt and are remembered.

    Remembering matters because Blender turns an exception raised inside an operator into a RuntimeError
    ("Python: Traceback ... KeyboardInterrupt"); the demo then still knows it was interrupted, and its clean-up
    (stopping the backend) runs either way.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Demo:
    """One run of the demo. :meth:`run` returns the report (also written to ``out/report.json``)."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.out = opts.out.resolve()
        self.stages: dict[str, dict[str, Any]] = {}
        self.addon: Any = None
        self.staging: tempfile.TemporaryDirectory[str] | None = None
        self.profile: Profile | None = None
        self.device = "cpu"
        self.backend_info: dict[str, Any] = {}
        self.backend_exit: int | None = None
        self.prompt_driven = True
        self.prompt_driven_reason: str | None = None
        self.stage_count = 7
        self.stage_index = 0
        self.last_losses: dict[str, dict[str, float]] = {}  # the last operator's jobs' last losses
        self.backend_log: tuple[Path, int] | None = None  # the add-on's backend log and where this run starts
        self.errors: list[str] = []  # stages that failed without stopping the run
        self.interrupts = Interrupts()

    # -----------------------------------------------------------------------------------------------------
    # Small helpers
    # -----------------------------------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        return self.addon.connection.session

    @contextlib.contextmanager
    def stage(self, key: str, title: str) -> Iterator[dict[str, Any]]:
        """Time one stage and print its header and duration; yields its report entry to fill in."""
        self.stage_index += 1
        print(f"[{self.stage_index}/{self.stage_count}] {title}", file=sys.stderr, flush=True)
        entry: dict[str, Any] = {}
        t0 = time.monotonic()
        yield entry
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.stages[key] = {"seconds": entry.pop("seconds"), **entry}
        print(f"      done in {self.stages[key]['seconds']:.1f} s", file=sys.stderr, flush=True)

    def operator(self, name: str) -> None:
        """Run ``bpy.ops.nerfart.<name>()`` with a progress bar; raise :class:`DemoError` if it fails.

        What Blender itself prints meanwhile (operator reports, Cycles' per-image lines) goes to
        ``logs/blender.log``: the terminal shows the stages and bars, and a failure's text comes back in the
        :class:`DemoError` (from the add-on's session, where the operator left it).
        """
        op = getattr(bpy.ops.nerfart, name)
        self.session.clear_error()
        with quiet_fds(self.out / "logs" / "blender.log") as terminal:
            progress = OperatorProgress(self.session, stream=terminal())
            self.last_losses = progress.last_losses
            with progress:
                try:
                    result = op()
                except RuntimeError as exc:  # background mode: an operator's error report raises
                    if self.interrupts.received is not None:
                        raise KeyboardInterrupt from None
                    detail = self.session.last_error or str(exc)
                    raise DemoError(f"the add-on's {name} operator failed: {detail}") from None
        if result != {"FINISHED"}:
            raise DemoError(f"the add-on's {name} operator did not finish ({', '.join(result)}): "
                            f"{self.session.last_error or 'no reason given'}")

    def save(self) -> None:
        """Save the .blend (Blender's "Saved ..." line goes to the log)."""
        with quiet_fds(self.out / "logs" / "blender.log"):
            bpy.ops.wm.save_mainfile()

    def last_job(self, kind: str) -> tuple[Any, Any]:
        """The scene's newest job reference of ``kind`` (RECONSTRUCT, ...) and the session's state for it."""
        refs = [r for r in bpy.context.scene.nerfart.backend.jobs if r.kind == kind]
        if not refs:
            raise DemoError(f"the add-on recorded no {kind.lower()} job")
        ref = refs[-1]
        return ref, self.session.jobs.get(ref.job_id)

    def job_dir(self, job_id: str) -> Path:
        return self.out / "work" / "jobs" / job_id

    # -----------------------------------------------------------------------------------------------------
    # Set-up: Blender, the add-on, the backend
    # -----------------------------------------------------------------------------------------------------

    def enable_addon(self) -> None:
        """Enable the add-on from this checkout, laid out as in its zip (``nerfart_blender`` + ``protocol``)."""
        import addon_utils

        sys.path.insert(0, str(REPO_ROOT))
        try:
            import build_addon
        except ImportError as exc:
            raise DemoError(f"build_addon.py is missing from {REPO_ROOT}: run the demo from a full checkout "
                            f"({exc})") from None
        self.staging = tempfile.TemporaryDirectory(prefix="nerfart-demo-addon-")
        build_addon.stage(Path(self.staging.name) / ADDON_MODULE, ("linux-x64",), [])
        sys.path.insert(0, self.staging.name)

        def fail(exc: BaseException) -> None:
            raise DemoError(f"the add-on does not enable in this Blender ({exc})")

        self.addon = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=fail)
        if self.addon is None or not hasattr(bpy.ops.nerfart, "reconstruct"):
            raise DemoError("the add-on did not register its operators")

    def disable_addon(self) -> None:
        if self.addon is not None:
            import addon_utils

            with contextlib.suppress(Exception):  # clean-up after an error must not hide the error
                addon_utils.disable(ADDON_MODULE, default_set=True)
            self.addon = None
        if self.staging is not None:
            self.staging.cleanup()
            self.staging = None

    def new_file(self) -> None:
        """An empty scene saved as ``out/scene.blend`` (so the add-on's ``//`` output paths land in ``out``)."""
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        prefs = bpy.context.preferences
        prefs.use_preferences_save = False  # never write the demo's settings into the user's Blender
        prefs.filepaths.save_version = 0  # no scene.blend1 backups
        with quiet_fds(self.out / "logs" / "blender.log"):
            bpy.ops.wm.save_as_mainfile(filepath=str(self.out / "scene.blend"))

    def start_backend(self, entry: dict[str, Any]) -> None:
        """Start the backend with the add-on's Start Local Backend operator (it blocks until connected)."""
        port = self.opts.port or free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
        prefs.endpoint = endpoint
        prefs.start_local = True
        prefs.python_path = sys.executable  # this environment has the backend's dependencies (torch...)
        prefs.work_dir = str(REPO_ROOT)  # the backend runs as `python -m backend` from the checkout
        prefs.backend_args = (f"-m backend serve --endpoint {{endpoint}} --work-dir "
                              f"{shlex.quote(str(self.out / 'work'))} --device {self.device}")
        # Heartbeats can lag while a 2-core machine trains; 30 s of silence before "not responding".
        prefs.timeout_s = 30.0
        if self.device == "cpu":
            # One OpenMP/MKL thread for the backend's torch on the CPU unless the user set a number (the
            # backend inherits this process's environment). Measured end to end on 2 shared cores, `--size cpu`:
            # 135 s with one thread, 179 s with torch's default of two (reconstruction 57 s against 129 s: its
            # small kernels wait on each other when anything else runs; stylize, render and mesh gain a little
            # from two). See README "How long it takes".
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(name, "1")
        # The add-on appends the backend's output to its log file; the part from here on is this run's.
        log = Path(self.addon.operators._log_path())
        self.backend_log = (log, log.stat().st_size if log.is_file() else 0)
        self.operator("start_local_backend")
        info = self.session.info
        self.backend_info = info
        gpu = info.get("gpu") or {}
        entry.update(endpoint=endpoint, backend_version=info.get("backend_version"),
                     protocol_version=info.get("protocol_version"), device=gpu.get("name", "unknown"),
                     log=str(self.out / "logs" / "backend.log"))
        missing = {"reconstruct", "stylize", "render", "extract_mesh"} - set(info.get("job_kinds", []))
        if missing:
            raise DemoError(f"the backend at {endpoint} does not run {', '.join(sorted(missing))} jobs; is it an "
                            "older version? Update the checkout")

    def stop_backend(self) -> None:
        """Stop the local backend (SIGTERM: it interrupts a running job and exits cleanly) and wait for it;
        then copy its log. Safe to call again, and when the backend never started or already exited."""
        if self.addon is None:
            return
        lb = self.addon.connection.local_backend
        proc = lb.proc
        try:
            if proc is None:
                return
            self.addon.connection.disconnect()
            if lb.running:
                with contextlib.suppress(RuntimeError), quiet_fds(self.out / "logs" / "blender.log"):
                    bpy.ops.nerfart.stop_local_backend()
            try:
                self.backend_exit = proc.wait(BACKEND_STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: do not wait any longer
                proc.kill()
                self.backend_exit = proc.wait()
            lb.service()  # let the add-on see the exit and close the backend's log
        finally:
            self.copy_backend_log()

    def copy_backend_log(self) -> None:
        """Copy this run's part of the add-on's backend log to ``out/logs/backend.log``."""
        if self.backend_log is None:
            return
        log, offset = self.backend_log
        with contextlib.suppress(OSError), open(log, "rb") as src:
            src.seek(offset)
            (self.out / "logs").mkdir(exist_ok=True)
            (self.out / "logs" / "backend.log").write_bytes(src.read())

    # -----------------------------------------------------------------------------------------------------
    # Capture
    # -----------------------------------------------------------------------------------------------------

    def use_gpu_cycles(self) -> str:
        """Let Cycles render the capture on the GPU when it can (GPU profile); returns the device type used."""
        scene = bpy.context.scene
        try:
            cprefs = bpy.context.preferences.addons["cycles"].preferences
        except KeyError:
            return "CPU"
        for kind in ("OPTIX", "CUDA", "HIP", "ONEAPI"):
            try:
                cprefs.compute_device_type = kind
                cprefs.get_devices()
            except (TypeError, ValueError, AttributeError):
                continue
            gpus = [d for d in cprefs.devices if d.type == kind]
            if gpus:
                for d in cprefs.devices:
                    d.use = d.type == kind
                scene.cycles.device = "GPU"
                return kind
        return "CPU"

    def capture_embedded(self, entry: dict[str, Any]) -> tuple[list[Any], tuple[int, int]]:
        """Build the head and capture it with the add-on's Capture from Scene (a Cycles ring, alpha)."""
        p = self.profile
        assert p is not None
        scene = bpy.context.scene
        objects = build_head(scene)
        for obj in bpy.context.view_layer.objects:
            obj.select_set(False)
        for obj in objects:
            obj.select_set(True)
        bpy.context.view_layer.objects.active = objects[0]
        cap = scene.nerfart.capture
        cap.source = "SCENE"
        cap.ring_count, cap.ring_elevations = p.ring_count, p.ring_elevations
        cap.ring_width = cap.ring_height = p.capture_size
        cap.ring_samples, cap.ring_transparent = p.capture_samples, True
        # Absolute folders: the add-on's path properties take no "//" when set from Python in Blender 5.0.
        cap.ring_output = str(self.out / "capture")
        cycles_device = self.use_gpu_cycles() if p.name == "gpu" else "CPU"
        self.operator("capture_from_scene")
        cameras = sorted((o for o in cap.cameras.objects if o.type == "CAMERA"), key=lambda o: o.name)
        entry.update(source="embedded head (Cycles)", path=str(Path(cap.folder)), views=len(cameras),
                     width=p.capture_size, height=p.capture_size, samples=p.capture_samples,
                     cycles_device=cycles_device)
        return cameras, (p.capture_size, p.capture_size)

    def import_real_capture(self, entry: dict[str, Any]) -> tuple[list[Any], tuple[int, int]]:
        """Import a capture folder with the add-on's Import Capture, which stands it upright at the origin."""
        assert self.opts.capture is not None
        folder = self.opts.capture.resolve()
        if not folder.is_dir():
            raise DemoError(f"--capture {folder} is not a folder")
        scene = bpy.context.scene
        cap = scene.nerfart.capture
        cap.source, cap.folder, cap.format = "FOLDER", str(folder), "AUTO"
        cap.show_photos = cap.set_resolution = True
        # The add-on's default placement: the subject's centre (where the cameras' optical axes meet) at the 3D
        # cursor, here the origin, the cameras' mean up along +Z, facing the Front view, a head's size (0.25 m).
        # The placement carries cameras, mesh and renders.
        scene.cursor.location = (0.0, 0.0, 0.0)
        cap.placement_mode = "CURSOR"
        self.operator("import_capture")
        cameras = sorted((o for o in cap.cameras.objects if o.type == "CAMERA"), key=lambda o: o.name)
        if not cameras:
            raise DemoError(f"the capture {folder} has no cameras")
        width, height = int(cameras[0]["nerfart_width"]), int(cameras[0]["nerfart_height"])
        bpy.context.view_layer.update()
        entry.update(source="capture folder", path=str(folder), views=len(cameras), width=width, height=height,
                     format=str(cap.cameras.get("nerfart_capture_format", "")))
        return cameras, (width, height)

    # -----------------------------------------------------------------------------------------------------
    # Jobs
    # -----------------------------------------------------------------------------------------------------

    def reconstruct(self, entry: dict[str, Any], image_size: tuple[int, int]) -> None:
        p = self.profile
        assert p is not None
        cap = bpy.context.scene.nerfart.capture
        cap.preset = p.reconstruct_preset.upper()
        cap.steps = p.reconstruct_steps
        cap.holdout_every = p.holdout_every
        cap.background = "AUTO"
        # A real capture's photos are scaled down to the profile's size (never up); the embedded one is made
        # at that size already.
        cap.scale = min(1.0, p.photo_long_side / max(image_size)) if self.opts.capture else 1.0
        self.operator("reconstruct")
        ref, job = self.last_job("RECONSTRUCT")
        out = job.outputs if job is not None else {}
        entry.update(job_id=ref.job_id, preset=p.reconstruct_preset, scale=round(cap.scale, 4),
                     steps=out.get("steps"), psnr=out.get("train_psnr"), heldout_psnr=out.get("heldout_psnr"),
                     train_seconds=out.get("elapsed_s"), background=out.get("background"),
                     losses=self.last_losses.get(ref.job_id, {}), subject_source=out.get("subject_source"),
                     subject_found=out.get("subject_found"), subject_bounds=out.get("subject_bounds"))

    def stylize(self, entry: dict[str, Any]) -> None:
        """Stylize with the real CLIP weights; when they cannot be had, say so and stylize with a random CLIP."""
        p = self.profile
        assert p is not None
        st = bpy.context.scene.nerfart.stylize
        st.prompt = self.opts.prompt
        st.preset = p.stylize_preset.upper()
        st.iterations = p.stylize_iterations
        st.scale = 0.0  # the preset's resolution
        st.clip_pretrained = self.opts.clip_pretrained
        attempts = []
        if self.opts.clip_pretrained == "random":
            self.prompt_driven, self.prompt_driven_reason = False, "--clip-pretrained random was asked for"
        try:
            self.operator("stylize")
        except DemoError:
            refs = [r for r in bpy.context.scene.nerfart.backend.jobs if r.kind == "STYLIZE"]
            job = self.session.jobs.get(refs[-1].job_id) if refs else None
            error = job.error if job is not None else ""
            if not is_weights_error(error):
                raise
            # The add-on puts its panel advice first and the backend's own text after "Backend: "; the demo
            # runs from a terminal, so its report gives the backend's reason.
            lines = error.splitlines()
            reason = next((ln[len("Backend: "):] for ln in lines if ln.startswith("Backend: ")), lines[0])
            attempts.append({"job_id": refs[-1].job_id, "clip_pretrained": st.clip_pretrained or "default",
                             "error": error})
            print(f"\n  The stylization's pretrained weights are missing. {reason}\n"
                  "  Continuing with a RANDOMLY INITIALISED CLIP so that the pipeline completes: the stylization "
                  "will NOT follow the prompt.\n"
                  "  For real weights: run `python -m backend.stylize.fetch_weights --fetch` once on a machine with "
                  "network access, or pass --clip-pretrained /path/to/open_clip_model.safetensors.\n",
                  file=sys.stderr, flush=True)
            self.prompt_driven, self.prompt_driven_reason = False, reason
            st.clip_pretrained = "random"
            self.operator("stylize")
        ref, job = self.last_job("STYLIZE")
        out = job.outputs if job is not None else {}
        losses = {k[len("loss_"):]: v for k, v in out.items() if k.startswith("loss_")}
        entry.update(job_id=ref.job_id, preset=p.stylize_preset, iterations=out.get("iterations"),
                     clip_pretrained=st.clip_pretrained or "default", prompt_driven=out.get("prompt_driven"),
                     losses=losses, failed_attempts=attempts)
        if out.get("prompt_driven") is False:
            self.prompt_driven = False
            self.prompt_driven_reason = self.prompt_driven_reason or out.get("note")

    def render_turntable(self, entry: dict[str, Any], cameras: list[Any], image_size: tuple[int, int]
                         ) -> tuple[list[Path], Any, Orbit]:
        p = self.profile
        assert p is not None
        scene = bpy.context.scene
        # The ring frames the whole bust with room to spare; the turntable comes closer so that the face gets
        # more of the (few, on a CPU) pixels. A real capture's cameras already frame it as its author meant.
        closer = EMBEDDED_TURNTABLE_DISTANCE if self.opts.capture is None else 1.0
        cam, orbit = add_turntable_camera(scene, cameras, image_size, p.turntable_frames, p.turntable_size, closer)
        out = scene.nerfart.outputs
        # The frames move to out/frames once rendered; they are put on the camera from there (wire_frames).
        out.mode, out.use_scene_range, out.file_format, out.open_sequence = "ACTIVE", True, "PNG", False
        out.output_dir = str(self.out / "renders")
        scene.nerfart.backend.render_source = "LATEST_STYLIZED"
        self.operator("render")
        ref, job = self.last_job("RENDER")
        files = sorted(Path(f) for f in (job.meta.get("files", []) if job is not None else []))
        if len(files) != p.turntable_frames:
            raise DemoError(f"the render returned {len(files)} frames, {p.turntable_frames} were asked for")
        outputs = job.outputs if job is not None else {}
        entry.update(job_id=ref.job_id, frames=len(files), width=scene.render.resolution_x,
                     height=scene.render.resolution_y, frames_per_second=outputs.get("frames_per_second"),
                     orbit=orbit.to_dict(), include_background=outputs.get("include_background"),
                     subject_source=outputs.get("subject_source"))
        return files, cam, orbit

    def extract_mesh(self, entry: dict[str, Any]) -> Any:
        from nerfart_blender.cameras_bpy import matrix_to_numpy

        p = self.profile
        assert p is not None
        out = bpy.context.scene.nerfart.outputs
        out.mesh_resolution, out.mesh_keep_largest, out.mesh_decimate = p.mesh_resolution, True, 1.0
        # What an artist gets by default: a textured GLB (2K; 1K for the coarse grids of the small sizes,
        # whose few triangles a 2K texture would not add detail to, and whose CPU bake it would make 4x longer).
        out.mesh_format = "GLB"
        out.output_dir = str(self.out)  # the add-on keeps the GLB it imports in <out>/meshes/, not in renders/
        # Texels to match the mesh: a 48^3 check-size mesh has a few thousand faces (and the CPU bakes every texel).
        out.mesh_texture_size = "2048" if p.mesh_resolution >= 256 else "1024" if p.mesh_resolution >= 96 else "512"
        self.operator("extract_mesh")
        ref, job = self.last_job("EXTRACT_MESH")
        if job is None or "object" not in job.meta:
            raise DemoError("the mesh job finished but no mesh arrived in the scene")
        obj = bpy.data.objects[job.meta["object"]]
        mesh_file = self.job_dir(ref.job_id) / "outputs" / str(job.outputs.get("mesh", "mesh.glb"))
        if not mesh_file.is_file():
            raise DemoError(f"the backend's mesh file {mesh_file} is missing")
        shutil.copyfile(mesh_file, self.out / mesh_file.name)
        bpy.context.view_layer.update()
        co = np.empty(len(obj.data.vertices) * 3, dtype=np.float64)
        obj.data.vertices.foreach_get("co", co)
        mw = matrix_to_numpy(obj.matrix_world)
        world = co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
        entry.update(job_id=ref.job_id, object=obj.name, resolution=p.mesh_resolution,
                     vertices=job.outputs.get("vertices"), faces=job.outputs.get("faces"), file=mesh_file.name,
                     texture_size=job.outputs.get("texture_size"),
                     bounds_blender=[world.min(0).round(4).tolist(), world.max(0).round(4).tolist()])
        return obj

    # -----------------------------------------------------------------------------------------------------
    # The .blend
    # -----------------------------------------------------------------------------------------------------

    def wire_frames(self, files: list[Path], camera: Any) -> list[Path]:
        """Move the frames to ``out/frames`` and show them, as the add-on shows a render's frames, as the turntable
        camera's background image sequence (frame k of the scene shows frame_000k.png)."""
        from nerfart_blender.frames_bpy import show_frames

        frames_dir = self.out / "frames"
        frames_dir.mkdir(exist_ok=True)
        moved = []
        for f in files:
            target = frames_dir / f.name
            os.replace(f, target)
            moved.append(target)
        old_dir = files[0].parent
        with contextlib.suppress(OSError):  # the add-on's per-job folder, now empty
            old_dir.rmdir()
            old_dir.parent.rmdir()
        ref, _job = self.last_job("RENDER")
        ref.output_dir = str(frames_dir)
        show_frames(bpy.context.scene, frames_dir, f"NeRF-Art {ref.name}", cameras=[camera.name])
        return moved

    def finish_blend(self, orbit: Orbit, summary: str) -> None:
        """Hide the source subject (the NeRF mesh sits where it was), leave a note, set the viewports to show
        vertex colours around the subject, use relative paths, and save."""
        scene = bpy.context.scene
        subject = bpy.data.collections.get(SUBJECT_COLLECTION)
        if subject is not None:
            subject.hide_viewport = subject.hide_render = True
        text = bpy.data.texts.get("NeRF-Art demo") or bpy.data.texts.new("NeRF-Art demo")
        text.clear()
        text.write(summary + "\n")
        for screen in bpy.data.screens:
            for area in screen.areas:
                if area.type != "VIEW_3D":
                    continue
                space = area.spaces.active
                space.shading.type = "SOLID"
                space.shading.color_type = "TEXTURE"  # the mesh's colours are its baked texture
                r3d = space.region_3d
                if r3d is not None:
                    from mathutils import Vector

                    r3d.view_location = Vector(orbit.centre.tolist())
                    r3d.view_distance = 1.6 * orbit.radius
        scene.frame_set(scene.frame_start)
        # Files inside the output folder by relative path, so the folder can be moved; anything else (the
        # add-on's live preview image, in the temporary folder) is packed into the .blend.
        for img in bpy.data.images:
            if not img.filepath or img.filepath.startswith("//") or img.source not in ("FILE", "SEQUENCE"):
                continue
            path = Path(bpy.path.abspath(img.filepath)).resolve()
            if path.is_relative_to(self.out):
                img.filepath = bpy.path.relpath(str(path))
            elif img.source == "FILE" and path.is_file():
                img.pack()
        self.save()

    # -----------------------------------------------------------------------------------------------------
    # The run
    # -----------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t_start = time.monotonic()
        prepare_out_dir(self.out)
        cuda = detect_cuda()
        if self.opts.device == "cuda" and not cuda:
            raise DemoError("--device cuda was asked for, but torch sees no CUDA GPU here")
        self.device = "cuda" if (cuda and self.opts.device != "cpu") else "cpu"
        self.profile = p = choose(self.opts.size, self.device == "cuda")
        print(f"NeRF-Art demo: {p.name} size on {'a CUDA GPU' if self.device == 'cuda' else 'the CPU'}"
              f"{'' if self.opts.size != 'auto' else ' (auto)'}; outputs go to {self.out}", file=sys.stderr)
        with self.interrupts:
            try:
                return self._run(t_start)
            finally:
                self.stop_backend()
                self.disable_addon()

    def _run(self, t_start: float) -> dict[str, Any]:
        p = self.profile
        assert p is not None
        with self.stage("backend", "Starting Blender, the add-on and a local backend") as entry:
            self.new_file()
            self.enable_addon()
            self.start_backend(entry)
            print(f"      backend {entry['backend_version']} on {entry['device']} at {entry['endpoint']}",
                  file=sys.stderr)
        if self.opts.capture is None:
            title = (f"Capturing the embedded head: {p.views} Cycles views at {p.capture_size} px, "
                     f"{p.capture_samples} samples")
        else:
            title = f"Importing the capture {self.opts.capture}"
        with self.stage("capture", title) as entry:
            if self.opts.capture is None:
                cameras, image_size = self.capture_embedded(entry)
            else:
                cameras, image_size = self.import_real_capture(entry)
        self.save()
        with self.stage("reconstruct", f"Reconstructing (preset {p.reconstruct_preset}"
                        + (f", {p.reconstruct_steps} steps" if p.reconstruct_steps else "") + ")") as entry:
            self.reconstruct(entry, image_size)
        print(f"      PSNR {report_mod.fmt_value(entry.get('psnr'))} dB on training views, "
              f"{report_mod.fmt_value(entry.get('heldout_psnr'))} dB held out", file=sys.stderr)
        with self.stage("stylize", f"Stylizing: \"{self.opts.prompt}\" (preset {p.stylize_preset}"
                        + (f", {p.stylize_iterations} iterations" if p.stylize_iterations else "") + ")") as entry:
            self.stylize(entry)
        with self.stage("render", f"Rendering a {p.turntable_frames}-frame turntable at {p.turntable_size} px"
                        ) as entry:
            files, camera, orbit = self.render_turntable(entry, cameras, image_size)
        with self.stage("extract_mesh", f"Extracting the mesh ({p.mesh_resolution}^3 grid)") as entry:
            # The last job, and nothing depends on it: when it fails (e.g. a model too soft for the surface's
            # isolevel at toy sizes), the frames, .blend and report are still written, and the run ends in an
            # error naming it.
            try:
                self.extract_mesh(entry)
            except DemoError as exc:
                entry["error"] = str(exc)
                self.errors.append(f"no mesh: {exc}")
                print(f"      WARNING: {exc}", file=sys.stderr)
        with self.stage("outputs", "Writing the .blend, contact sheet, preview and report") as entry:
            frames = self.wire_frames(files, camera)
            rep = self.build_report(t_start, image_size)
            summary = report_mod.summary_text(rep, self.out)
            self.finish_blend(orbit, summary)
            inputs = self.capture_images()
            size = report_mod.contact_sheet(
                self.out / "contact_sheet.png", report_mod.header_lines(rep),
                [(f"Capture: {len(inputs)} input views", report_mod.pick_evenly(inputs, 8)),
                 (f"Turntable: the stylized NeRF, {len(frames)} frames", report_mod.pick_evenly(frames, 24))])
            gif_frames = report_mod.turntable_gif(self.out / "turntable.gif", frames, FPS, p.gif_frames)
            entry.update(contact_sheet_size=list(size), gif_frames=gif_frames)
        self.stop_backend()
        rep = self.build_report(t_start, image_size)
        report_mod.write_json(self.out / "report.json", rep)
        print("\n" + report_mod.summary_text(rep, self.out), flush=True)
        return rep

    def capture_images(self) -> list[Path]:
        """The capture's image files, in camera order (for the contact sheet)."""
        from nerfart_blender.core.captures import read_capture

        folder = Path(bpy.path.abspath(bpy.context.scene.nerfart.capture.folder))
        capture = read_capture(folder)
        return [c.image for c in capture.cameras if c.image is not None]

    def build_report(self, t_start: float, image_size: tuple[int, int]) -> dict[str, Any]:
        p = self.profile
        assert p is not None
        gpu = self.backend_info.get("gpu") or {}
        cap = self.stages.get("capture", {})
        manifest = REPO_ROOT / "blender_addon" / "blender_manifest.toml"
        addon_version = tomllib.loads(manifest.read_text(encoding="utf-8")).get("version") \
            if manifest.is_file() else None
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:
            torch_version = None
        return {
            "nerfart_demo_report": report_mod.REPORT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": ["python", "-m", "backend", *sys.argv[1:]],
            "size": p.name,
            "profile": p.to_dict(),
            "device": {"name": gpu.get("name", self.device), "kind": self.device,
                       "memory_total": gpu.get("memory_total"), "cpu_count": os.cpu_count(),
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
            "prompt": self.opts.prompt,
            "prompt_driven": self.prompt_driven,
            "prompt_driven_reason": self.prompt_driven_reason,
            "capture": {"views": cap.get("views"), "width": image_size[0], "height": image_size[1],
                        "source": cap.get("source"), "path": cap.get("path"),
                        "subject_bounds": [list(b) for b in SUBJECT_BOUNDS] if self.opts.capture is None else None},
            "stages": self.stages,
            "total_seconds": round(time.monotonic() - t_start, 2),
            "versions": {"backend": self.backend_info.get("backend_version"),
                         "protocol": self.backend_info.get("protocol_version"),
                         "blender": bpy.app.version_string, "addon": addon_version, "torch": torch_version,
                         "python": platform.python_version()},
            "backend_exit_code": self.backend_exit,
            "errors": self.errors,
            "outputs": {"blend": "scene.blend", "frames": "frames/", "contact_sheet": "contact_sheet.png",
                        "preview": "turntable.gif", "mesh": "mesh.glb" if (self.out / "mesh.glb").is_file() else None,
                        "report": "report.json",
                        "capture": "capture/" if self.opts.capture is None else str(self.opts.capture),
                        "work_dir": "work/", "logs": "logs/"},
        }


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns its report. Raises :class:`DemoError` with a readable message on failure."""
    return Demo(opts).run()
