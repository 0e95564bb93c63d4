"""Small synthetic captures in every format, written with the standard library and numpy only.

The add-on tests run under Blender 4.2's Python too, which has no Pillow: images are grey PNGs written by
hand. Every capture views the origin from a ring of ``n`` cameras (OpenCV c2w from :func:`ring_c2w`).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captures.colmap import rotmat_to_qvec


def write_png(path: Path, w: int, h: int, alpha: bool = False, value: int = 0) -> Path:
    """An 8-bit grey-level RGB (or RGBA) PNG of one value."""
    channels = 4 if alpha else 3
    raw = b"".join(b"\x00" + bytes([value]) * (channels * w) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6 if alpha else 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def ring_c2w(i: int, n: int, radius: float = 4.0) -> np.ndarray:
    """OpenCV c2w (+Z forward, +Y down) of view ``i`` of ``n`` on a tilted ring, looking at the origin."""
    az = 2 * math.pi * i / n
    pos = radius * np.array([math.cos(az), math.sin(az), 0.35])
    z = -pos / np.linalg.norm(pos)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x, np.cross(z, x), z])
    m[:3, 3] = pos
    return m


def nerfstudio(root: Path, n: int = 4, w: int = 20, h: int = 14) -> Path:
    """transforms.json with per-frame intrinsics, distortion and non-square pixels (one aspect, fx/fy = 1/1.025)."""
    frames = []
    for i in range(n):
        write_png(root / "images" / f"frame_{i:02d}.png", w, h, value=40 * i)
        frames.append({"file_path": f"images/frame_{i:02d}.png", "fl_x": 18.0 + i, "fl_y": (18.0 + i) * 1.025,
                       "cx": 10.25, "cy": 6.75, "transform_matrix": (ring_c2w(i, n) @ np.diag([1, -1, -1, 1])).tolist()})
    data = {"w": w, "h": h, "k1": 0.02, "k2": -0.01, "p1": 0.001, "p2": -0.002, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def nerf_synthetic(root: Path, n: int = 3, size: int = 16) -> Path:
    """NeRF-synthetic: transforms_train.json with camera_angle_x, extension-less file paths, RGBA images."""
    frames = []
    for i in range(n):
        write_png(root / "train" / f"r_{i}.png", size, size, alpha=True, value=60 * i)
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": (ring_c2w(i, n) @ np.diag([1, -1, -1, 1])).tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


COLMAP_INTRINSICS = (21.0, 22.5, 10.5, 7.25)  # fx fy cx cy of the OPENCV camera below


def colmap(root: Path, n: int = 5, w: int = 20, h: int = 14, binary: bool = False,
           names: Callable[[int], str] = lambda i: f"{i:06d}.png") -> Path:
    """A COLMAP model (sparse/0) with one OPENCV camera (distorted) and a few points, plus the images."""
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    fx, fy, cx, cy = COLMAP_INTRINSICS
    params = (fx, fy, cx, cy, 0.05, -0.02, 0.001, 0.002)
    poses = []
    for i in range(n):
        w2c = np.linalg.inv(ring_c2w(i, n))
        poses.append((i + 1, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], names(i)))
        write_png(root / "images" / names(i), w, h, value=30 * i)
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 0.4
    if binary:
        (model / "cameras.bin").write_bytes(struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, 4, w, h)
                                            + struct.pack("<8d", *params))
        data = struct.pack("<Q", n)
        for image_id, q, t, name in poses:
            data += struct.pack("<i7di", image_id, *q, *t, 1) + name.encode() + b"\0" + struct.pack("<Q", 0)
        (model / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(pts))
        for j, p in enumerate(pts):
            data += struct.pack("<Q3d3BdQ", j, *p, 1, 2, 3, 0.5, 0)
        (model / "points3D.bin").write_bytes(data)
    else:
        # repr of a Python float: numpy 2 (Blender 5.2's) writes a numpy scalar as "np.float64(0.4)".
        def num(v) -> str:
            return repr(float(v))

        (model / "cameras.txt").write_text(f"1 OPENCV {w} {h} " + " ".join(map(num, params)) + "\n")
        (model / "images.txt").write_text("".join(f"{i} {' '.join(map(num, q))} {' '.join(map(num, t))} 1 {name}\n\n"
                                                  for i, q, t, name in poses))
        (model / "points3D.txt").write_text("".join(f"{j} {num(x)} {num(y)} {num(z)} 1 2 3 0.5\n"
                                                    for j, (x, y, z) in enumerate(pts)))
    return root


def idr(root: Path, n: int = 5, w: int = 20, h: int = 14, k: tuple[float, float, float, float] = COLMAP_INTRINSICS,
        write_images: bool = True) -> Path:
    """cameras.npz with ``world_mat_i = K [R|t]`` for the ring (and its images unless they exist already)."""
    fx, fy, cx, cy = k
    kmat = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    npz = {}
    for i in range(n):
        p = np.eye(4)
        p[:3] = kmat @ np.linalg.inv(ring_c2w(i, n))[:3]
        npz[f"world_mat_{i}"] = p
        if write_images:
            write_png(root / "images" / f"{i:06d}.png", w, h, value=30 * i)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "cameras.npz", **npz)
    return root


def llff(root: Path, n: int = 4, w: int = 24, h: int = 16) -> Path:
    """poses_bounds.npy for the ring at twice the image size (a resized copy in images/)."""
    rows = []
    for i in range(n):
        c2w = ring_c2w(i, n)
        r = c2w[:3, :3]
        pose = np.column_stack([r[:, 1], r[:, 0], -r[:, 2], c2w[:3, 3], [2 * h, 2 * w, 40.0]])
        rows.append(np.concatenate([pose.ravel(), [1.0, 9.0]]))
        write_png(root / "images" / f"{i:03d}.png", w, h, value=50 * i)
    np.save(root / "poses_bounds.npy", np.array(rows))
    return root


def mattes_by_index(root: Path, n: int, w: int, h: int) -> None:
    """matte/0.png ... named by index, not like the images."""
    for i in range(n):
        write_png(root / "matte" / f"{i}.png", w, h, value=255)
