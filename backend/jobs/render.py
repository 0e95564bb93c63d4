"""The ``render`` job: frames of a checkpoint through any number of cameras, streamed as they finish.

Frames hold the subject alone by default: rays are cut to the subject bounds (``params.subject_bounds``, else
the checkpoint's, see :mod:`backend.jobs.subject`) and are transparent where nothing of the subject is. With
``include_background`` the whole scene is rendered; around a stylized subject the background then comes from
the reconstruction the stylization started from, so it keeps its reconstructed look (the frame renderer
composites the two models along each ray). A checkpoint without bounds renders the whole scene either way.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.jobstore.context import JobContext
from backend.outputs.encode_pool import OrderedEncodePool
from backend.outputs.images import encode_exr_passes, encode_png
from protocol import Message

from .checkpoints import load_job_checkpoint
from .subject import as_subject, bounds_to_world, reconstruction_of, source_subject

# Rays marched at once and samples per field evaluation on the CPU. A cancel is checked before each, so they
# bound how long a cancel waits within a frame: on one core, for the tiny model, a chunk of 2^15 rays takes
# ~0.4 s to find its occupied steps and a batch of 2^16 samples ~35 ms, where the GPU defaults (2^19 rays,
# 2^24 samples) took seconds. On the CPU the smaller pieces are not slower.
CPU_MAX_RAYS = 2**15
CPU_MAX_SAMPLES = 2**16


def frame_file_name(index: int, frame: int, camera_name: str, ext: str) -> str:
    """``00012_Camera.png``: frame number first (sorts as an image sequence), then a file-safe camera name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", camera_name)[:64] or "camera"
    return f"{frame:05d}_{safe}.{ext}" if frame >= 0 else f"i{index:05d}_{safe}.{ext}"


def straight_alpha(rgba_premultiplied: np.ndarray) -> np.ndarray:
    """Un-premultiply a render: PNG and the add-on expect straight alpha."""
    alpha = rgba_premultiplied[..., 3:]
    rgb = np.where(alpha > 1e-6, rgba_premultiplied[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1)


def quantized_straight_alpha(rgba_premultiplied: torch.Tensor, bit_depth: int) -> np.ndarray:  # [H, W, 4]
    """Straight-alpha ``uint8``/``uint16`` pixels of a premultiplied ``(H, W, 4)`` float render.

    Done on the render's device: the host then receives 4 (or 8) bytes per pixel instead of 16 and skips
    a float pass over the frame (at 1080p the NumPy version cost more than rendering on the GPU).
    """
    alpha = rgba_premultiplied[..., 3:].clamp(0.0, 1.0)
    rgb = torch.where(alpha > 1e-6, rgba_premultiplied[..., :3] / alpha.clamp_min(1e-6), 0.0).clamp(0.0, 1.0)
    scale = 255.0 if bit_depth == 8 else 65535.0
    q = torch.round(torch.cat([rgb, alpha], dim=-1).nan_to_num(0.0) * scale)
    if bit_depth == 8:
        return q.to(torch.uint8).cpu().numpy()
    return q.to(torch.int32).cpu().numpy().astype(np.uint16)


def linear_premultiplied(rgba_premultiplied: torch.Tensor) -> torch.Tensor:  # [H, W, 4] -> [H, W, 4]
    """Scene-linear, premultiplied colour (what EXR holds) of a premultiplied ``(H, W, 4)`` sRGB render.

    The NeRF's colours are display-referred sRGB like its photos: un-premultiply, invert the sRGB transfer
    function, premultiply again (on the render's device, before the frame leaves it).
    """
    alpha = rgba_premultiplied[..., 3:].clamp(0.0, 1.0)
    srgb = torch.where(alpha > 1e-6, rgba_premultiplied[..., :3] / alpha.clamp_min(1e-6), 0.0).clamp(0.0, 1.0)
    linear = torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    return torch.cat([linear * alpha, alpha], dim=-1).nan_to_num(0.0)


def _encode(pixels: np.ndarray, passes: tuple[np.ndarray, np.ndarray] | None, fmt: str) -> bytes:
    """An EXR frame's bytes when ``passes`` (depth, normal) are given, else a PNG's."""
    if passes is not None:
        return encode_exr_passes(pixels, *passes)
    return encode_png(pixels, 16 if fmt == "png16" else 8)


def _write_atomically(path: Path, data: bytes) -> None:
    """A frame file is either absent or complete, even if the backend is killed while writing it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def run_render(ctx: JobContext) -> dict[str, Any]:
    from backend.jobs.camera_path import cameras_from_protocol
    from backend.nerf.frame_renderer import FrameRenderer, placement_rotation_scale

    cameras, frames = cameras_from_protocol(ctx.params["cameras"])
    fmt = ctx.params.get("format", "png")
    with_depth = bool(ctx.params.get("depth", False))
    placement = ctx.params.get("placement")
    placement = np.asarray(placement, dtype=np.float64) if placement is not None else None
    placement_rotation_scale(placement)  # refuse a placement that is not a similarity before loading anything
    ext, blob_fmt = ("exr", "exr") if fmt == "exr" else ("png", "png")
    ctx.progress("loading model", 0, 1)
    source = ctx.source_job(ctx.params["source_job"], ("reconstruct", "stylize"))
    checkpoint = load_job_checkpoint(ctx, source)
    subject, subject_source = source_subject(ctx, source, checkpoint)
    include_background = bool(ctx.params.get("include_background", False))
    sizes = {} if ctx.device.startswith("cuda") else {"max_rays": CPU_MAX_RAYS, "max_samples": CPU_MAX_SAMPLES}
    background_model = "none"
    if not include_background:
        if subject is not None:
            as_subject(checkpoint)
        renderer = FrameRenderer(checkpoint, subject=subject, **sizes)
    else:
        reconstruction = reconstruction_of(ctx, source) if subject is not None else None
        if reconstruction is None:  # a reconstruction (or no bounds): its own whole scene is the background
            renderer = FrameRenderer(checkpoint, **sizes)
            background_model = "source"
        else:
            ctx.progress("loading model", 0, 1, message=f"background from reconstruction {reconstruction.job_id}")
            as_subject(checkpoint)  # (a stylized model holds no air: its grid was cut when it was stylized)
            renderer = FrameRenderer(checkpoint, subject=subject, background=load_job_checkpoint(ctx, reconstruction),
                                     **sizes)
            background_model = f"reconstruction {reconstruction.job_id}"
    out_dir = ctx.outputs_dir / "frames"
    out_dir.mkdir(exist_ok=True)
    files: list[str] = []
    t0 = time.monotonic()

    def finish(i: int, data: bytes, depth: np.ndarray | None) -> None:
        """Write frame ``i``, stream it to the client and report progress (frames finish in order)."""
        name = frame_file_name(i, frames[i], cameras.names[i], ext)
        ctx.reserve_disk(len(data) + (depth.nbytes if depth is not None else 0), f"frame {i} ({name})")
        _write_atomically(out_dir / name, data)
        if depth is not None:
            buf = io.BytesIO()
            np.save(buf, depth)
            _write_atomically(out_dir / (name.rsplit(".", 1)[0] + "_depth.npy"), buf.getvalue())
        files.append(f"frames/{name}")
        msg = Message("frame", {"index": i, "camera_name": cameras.names[i], "frame": frames[i],
                                "width": int(cameras.width[i]), "height": int(cameras.height[i]),
                                "file": f"frames/{name}"})
        msg.content["image"] = msg.add_blob(data, blob_fmt)
        if depth is not None:
            msg.content["depth"] = msg.add_array(depth)
        ctx.send(msg)
        done = len(files)
        elapsed = time.monotonic() - t0
        ctx.progress("rendering", done, len(cameras), eta_s=elapsed / done * (len(cameras) - done))

    def finished_earlier(i: int) -> tuple[bytes, np.ndarray | None] | None:
        """Frame ``i`` as an interrupted run of this job left it (files are complete or absent)."""
        name = frame_file_name(i, frames[i], cameras.names[i], ext)
        depth_file = out_dir / (name.rsplit(".", 1)[0] + "_depth.npy")
        if not ctx.resuming or not (out_dir / name).is_file() or (with_depth and not depth_file.is_file()):
            return None
        return (out_dir / name).read_bytes(), np.load(depth_file) if with_depth else None

    # Encoding runs on worker threads while the GPU renders the next frames (see OrderedEncodePool).
    with OrderedEncodePool[bytes]() as pool:
        for i in range(len(cameras)):
            ctx.check_cancel()
            earlier = finished_earlier(i)
            if earlier is not None:  # a resumed job re-sends what it has instead of rendering it again
                for (j, d), data in pool.drain():
                    finish(j, data, d)
                finish(i, *earlier)
                continue
            passes = None
            if fmt == "exr" or with_depth:  # Blender's Depth (and, for EXR, Normal) pass, in scene units
                frame = renderer.render_passes(cameras, i, placement, normals=fmt == "exr",
                                               check_cancel=ctx.check_cancel)
                rgba_t, depth_t = frame.rgba, frame.depth
            else:  # the PNG path: colour only, as fast as before
                rgba_t, depth_t = renderer.render(cameras, i, check_cancel=ctx.check_cancel)
            if fmt == "exr" and frame.normal is not None:
                pixels = linear_premultiplied(rgba_t).cpu().numpy()
                passes = (frame.depth.cpu().numpy(), frame.normal.cpu().numpy())
            else:
                pixels = quantized_straight_alpha(rgba_t, 16 if fmt == "png16" else 8)
            # The depth map leaves the GPU only when it was asked for (8 MB a frame at 1080p).
            depth = depth_t.cpu().numpy().astype(np.float32) if with_depth else None
            for (j, d), data in pool.submit((i, depth), _encode, pixels, passes, fmt):
                finish(j, data, d)
        for (j, d), data in pool.drain():
            finish(j, data, d)
    seconds = time.monotonic() - t0
    return {"frames": files, "count": len(files), "render_seconds": seconds,
            "frames_per_second": len(files) / max(seconds, 1e-9), "field": renderer.field_impl,
            "subject_bounds": bounds_to_world(subject, checkpoint.normalization), "subject_source": subject_source,
            "include_background": include_background, "background_model": background_model}
