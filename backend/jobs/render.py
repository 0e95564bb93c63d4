"""The ``render`` job: frames of a checkpoint through any number of cameras, streamed as they finish."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from backend.outputs.images import encode_exr, encode_png
from backend.server.jobs import JobContext
from protocol import Message

from .checkpoints import load_source_checkpoint


def frame_file_name(index: int, frame: int, camera_name: str, ext: str) -> str:
    """``00012_Camera.png``: frame number first (sorts as an image sequence), then a file-safe camera name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", camera_name)[:64] or "camera"
    return f"{frame:05d}_{safe}.{ext}" if frame >= 0 else f"i{index:05d}_{safe}.{ext}"


def straight_alpha(rgba_premultiplied: np.ndarray) -> np.ndarray:
    """Un-premultiply a render: PNG and the add-on expect straight alpha."""
    alpha = rgba_premultiplied[..., 3:]
    rgb = np.where(alpha > 1e-6, rgba_premultiplied[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1)


def run_render(ctx: JobContext) -> dict[str, Any]:
    from backend.captures.camera_path import cameras_from_protocol
    from backend.nerf.evaluate import render_image

    cameras, frames = cameras_from_protocol(ctx.params["cameras"])
    fmt = ctx.params.get("format", "png")
    with_depth = bool(ctx.params.get("depth", False))
    ctx.progress("loading model", 0, 1)
    ckpt = load_source_checkpoint(ctx)
    out_dir = ctx.outputs_dir / "frames"
    out_dir.mkdir(exist_ok=True)
    files: list[str] = []
    t0 = time.monotonic()
    for i in range(len(cameras)):
        ctx.check_cancel()
        rgba_t, depth_t = render_image(ckpt, cameras, i)
        rgba = straight_alpha(rgba_t.cpu().numpy())
        depth = depth_t.cpu().numpy().astype(np.float32)
        if fmt == "exr":
            data, ext, blob_fmt = encode_exr(rgba, depth if with_depth else None), "exr", "exr"
        else:
            data, ext, blob_fmt = encode_png(rgba, 16 if fmt == "png16" else 8), "png", "png"
        name = frame_file_name(i, frames[i], cameras.names[i], ext)
        (out_dir / name).write_bytes(data)
        if with_depth:
            np.save(out_dir / (name.rsplit(".", 1)[0] + "_depth.npy"), depth)
        files.append(f"frames/{name}")
        msg = Message("frame", {"index": i, "camera_name": cameras.names[i], "frame": frames[i],
                                "width": int(cameras.width[i]), "height": int(cameras.height[i]),
                                "file": f"frames/{name}"})
        msg.content["image"] = msg.add_blob(data, blob_fmt)
        if with_depth:
            msg.content["depth"] = msg.add_array(depth)
        ctx.send(msg)
        elapsed = time.monotonic() - t0
        ctx.progress("rendering", i + 1, len(cameras), eta_s=elapsed / (i + 1) * (len(cameras) - i - 1))
    seconds = time.monotonic() - t0
    return {"frames": files, "count": len(files), "render_seconds": seconds,
            "frames_per_second": len(files) / max(seconds, 1e-9)}
