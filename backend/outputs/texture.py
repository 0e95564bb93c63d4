"""Textured meshes: decimate -> UV atlas (xatlas) -> per-texel colour baked from the field -> dilated texture.

Functional like :mod:`backend.outputs.mesh`: the field comes in as a callable, so this module imports no model
and is tested on an analytic colour field.

**Which colour a texel gets.** Each texel's 3D point on the surface (barycentric interpolation over its UV
triangle) is coloured exactly as :func:`backend.outputs.mesh.vertex_colors` colours a vertex: a short ray
starts 4 voxels outside the surface and looks back along the negated (interpolated) normal, and the segment is
volume-rendered and normalised by its opacity. That is what the renderer shows an artist: a render composites
every sample of the few-voxel-thick layer around the isosurface, weighted by opacity, so a single query of the
colour MLP *at* the isosurface point (where the layer is only half opaque) would pick a colour from inside or
outside the visible layer and drift from the renders. The view direction is the normal, i.e. the surface seen
head-on, the view in which a texture is looked at most.

**Seams.** Texels outside every UV triangle are filled by repeated dilation from their filled neighbours
(:data:`DILATE_TEXELS` rings) and the rest of the atlas with the mean colour, so bilinear filtering and
mip-maps never blend in black at island borders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .mesh import RadianceFn, _to_u8, vertex_colors

TEXTURE_SIZES = (512, 1024, 2048, 4096)
# Texels left free between UV islands by the packer, and rings filled past the island borders.
ATLAS_PADDING = 4
DILATE_TEXELS = 16
# "auto" decimation: meshes with more faces than this are reduced to it. The texture carries the colour
# detail, so 40k triangles (~20k vertices) carry a head's shape, and the GLB and the unwrap (CPU) stay small
# (bench/results/mesh_texture_*).
AUTO_TARGET_FACES = 40_000
# Faces per piece handed to xatlas (see :func:`unwrap`): small enough that chart growth stays near-linear.
UNWRAP_PIECE_FACES = 2048


@dataclass
class TexturedMesh:
    """A UV-unwrapped triangle mesh with one colour texture.

    Attributes:
        vertices: ``(n_vertices, 3)`` float32 (seams split vertices, so there are more than the source's).
        faces: ``(n_faces, 3)`` int32, counter-clockwise seen from outside.
        uvs: ``(n_vertices, 2)`` float32 in [0, 1], OpenGL convention (v = 0 is the texture's bottom row).
        texture: ``(size, size, 3)`` uint8 sRGB, row 0 at the top (v = 1).
        normals: ``(n_vertices, 3)`` float32 unit outward normals of the welded surface, so shading stays
            smooth across UV seams; None lets readers compute them.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray
    normals: np.ndarray | None = None


def auto_target_faces(n_faces: int, target_faces: int | None) -> int | None:
    """The face count to decimate to, or None to keep the mesh.

    Args:
        target_faces: None or 0 for "auto" (reduce to :data:`AUTO_TARGET_FACES` only when larger), -1 to keep
            every face, else the count wanted.
    """
    if target_faces is None or target_faces == 0:
        return AUTO_TARGET_FACES if n_faces > AUTO_TARGET_FACES else None
    if target_faces < 0 or target_faces >= n_faces:
        return None
    return int(target_faces)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation (``fast_simplification``, Garland-Heckbert) to about ``target_faces``.

    Args:
        vertices: ``(n, 3)`` float32. faces: ``(m, 3)`` int32.

    Returns:
        ``(vertices (n', 3) float32, faces (m', 3) int32)``, winding kept.
    """
    import fast_simplification

    v, f = fast_simplification.simplify(np.ascontiguousarray(vertices, np.float32),
                                        np.ascontiguousarray(faces, np.int32), target_count=int(target_faces))
    return np.asarray(v, np.float32), np.asarray(f, np.int32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of a mesh wound counter-clockwise from outside: ``(n, 3)`` float32."""
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    fn = np.cross(b - a, c - a)  # length = 2 * area, so the sum is area-weighted
    vn = np.zeros((len(vertices), 3))
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return (vn / np.maximum(norm, 1e-12)).astype(np.float32)


def spatial_pieces(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """Split the faces into spatially compact pieces of at most ``max_faces`` faces each, by recursive median
    cuts of the face centroids across the longest side of each piece's bounding box (deterministic).

    Args:
        vertices: ``(n, 3)`` float. faces: ``(m, 3)`` int.

    Returns:
        a list of face-index arrays (int64) that together hold every face once.
    """
    centroids = vertices[faces].mean(axis=1)
    pieces, todo = [], [np.arange(len(faces))]
    while todo:
        idx = todo.pop()
        if len(idx) <= max_faces:
            pieces.append(idx)
            continue
        c = centroids[idx]
        axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
        order = idx[np.argsort(c[:, axis], kind="stable")]
        half = len(order) // 2
        todo += [order[half:], order[:half]]
    return pieces


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int,
           padding: int = ATLAS_PADDING, piece_faces: int = UNWRAP_PIECE_FACES
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV atlas of the mesh (xatlas, CPU), packed for a ``texture_size`` square texture.

    xatlas's chart growth costs far more than linearly in the faces of one mesh (bench/results/mesh_texture_*),
    and it works on separate meshes in parallel on its own threads. So the mesh is
    cut into spatially compact pieces of at most ``piece_faces`` faces (:func:`spatial_pieces`), each piece is
    given to xatlas as a mesh of its own, and one atlas packs the charts of all of them. The cuts become chart
    borders, which the texture's dilation hides like any other seam.

    Returns:
        ``(vmapping (n', ) int source vertex of each new vertex, faces (m, 3) int32 into the new vertices,
        uvs (n', 2) float32 in [0, 1])``; ``faces`` keeps the input's face order.
    """
    import xatlas

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.asarray(faces, np.int64)
    pieces = spatial_pieces(v, f, max(1, int(piece_faces)))
    atlas = xatlas.Atlas()
    used_of_piece = []
    for idx in pieces:
        used, local = np.unique(f[idx], return_inverse=True)
        used_of_piece.append(used)
        atlas.add_mesh(v[used], np.ascontiguousarray(local.reshape(-1, 3), np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    pack.blockAlign = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmaps, uv_list, out_faces = [], [], np.empty((len(f), 3), np.int32)
    offset = 0
    for i, (idx, used) in enumerate(zip(pieces, used_of_piece, strict=True)):
        vmapping, piece_faces_out, uvs = atlas[i]
        vmaps.append(used[vmapping.astype(np.int64)])
        uv_list.append(uvs.astype(np.float32))
        out_faces[idx] = piece_faces_out.astype(np.int64) + offset
        offset += len(vmapping)
    return np.concatenate(vmaps), out_faces, np.concatenate(uv_list)


def rasterize_uv(uvs: torch.Tensor, faces: torch.Tensor, size: int,
                 face_chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor]:
    """Which triangle covers each texel centre of a ``size x size`` texture, and where in it.

    Every triangle enumerates the texels of its UV bounding box (in chunks of faces, so memory stays flat) and
    keeps those whose centre lies inside it (barycentric coordinates >= 0). Texel (row, col) has its centre at
    ``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size``.

    Args:
        uvs: ``(n_vertices, 2)`` float in [0, 1]. faces: ``(n_faces, 3)`` long.

    Returns:
        ``(face_id (size * size,) long, -1 where no triangle covers the texel; bary (size * size, 3) float32)``,
        row-major texels.
    """
    dev = uvs.device
    face_id = torch.full((size * size,), -1, dtype=torch.long, device=dev)
    bary = torch.zeros((size * size, 3), dtype=torch.float32, device=dev)
    px = uvs.double() * size  # texel units; x = u * size, y = (1 - v) * size
    px = torch.stack([px[:, 0], size - px[:, 1]], dim=-1)
    for f0 in range(0, len(faces), face_chunk):
        fidx = torch.arange(f0, min(f0 + face_chunk, len(faces)), device=dev)
        tri = px[faces[fidx]]  # [m, 3, 2]
        lo = (tri.min(dim=1).values - 0.5).ceil().clamp(0, size - 1).long()  # first texel centre >= min
        hi = (tri.max(dim=1).values - 0.5).floor().clamp(-1, size - 1).long()
        w, h = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0), (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
        counts = w * h
        total = int(counts.sum())
        if total == 0:
            continue
        owner = torch.repeat_interleave(torch.arange(len(fidx), device=dev), counts)  # [total]
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=dev) - start[owner]
        col = lo[owner, 0] + local % w[owner]
        row = lo[owner, 1] + local // w[owner]
        p = torch.stack([col.double() + 0.5, row.double() + 0.5], dim=-1)
        a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        ok = den.abs() > 1e-12
        den = torch.where(ok, den, torch.ones_like(den))
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1.0 - l1 - l2
        eps = -1e-9
        inside = ok & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
        texel = (row * size + col)[inside]
        face_id[texel] = fidx[owner[inside]]
        bary[texel] = torch.stack([l0, l1, l2], dim=-1)[inside].float()
    return face_id, bary


def dilate(rgb: torch.Tensor, filled: torch.Tensor, rings: int = DILATE_TEXELS) -> torch.Tensor:
    """Fill empty texels from their filled 8-neighbours, ``rings`` times, then the rest with the mean colour.

    Args:
        rgb: ``(H, W, 3)`` float. filled: ``(H, W)`` bool.

    Returns:
        ``(H, W, 3)`` float, every texel set.
    """
    img = torch.where(filled[..., None], rgb, torch.zeros_like(rgb)).permute(2, 0, 1)[None]  # [1, 3, H, W]
    mask = filled[None, None].float()
    kernel = torch.ones(1, 1, 3, 3, device=rgb.device, dtype=img.dtype)
    for _ in range(rings):
        if bool(mask.all()):
            break
        s = torch.nn.functional.conv2d(img, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        n = torch.nn.functional.conv2d(mask, kernel, padding=1)
        grow = (mask == 0) & (n > 0)
        img = torch.where(grow, s / n.clamp(min=1), img)
        mask = torch.where(grow, torch.ones_like(mask), mask)
    out = img[0].permute(1, 2, 0)
    done = mask[0, 0] > 0
    if bool(done.any()) and not bool(done.all()):
        out = torch.where(done[..., None], out, out[done].mean(0))
    return out


def bake_texture(radiance_fn: RadianceFn, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
                 normals: np.ndarray, size: int, voxel: float, device: torch.device | str,
                 chunk: int = 1 << 16, check_cancel: Callable[[], None] | None = None) -> np.ndarray:
    """Bake the field's colour into a ``size x size`` texture over the mesh's UV atlas.

    Args:
        vertices: ``(n, 3)`` model coordinates. faces: ``(m, 3)`` int. uvs: ``(n, 2)`` in [0, 1].
        normals: ``(n, 3)`` unit outward vertex normals.
        voxel: the meshing grid's cell size; the colour ray spans 4 voxels each side of the surface.
        chunk: texels per call of :func:`vertex_colors` (each takes 32 field samples).

    Returns:
        ``(size, size, 3)`` uint8 sRGB, row 0 at the top (v = 1).
    """
    dev = torch.device(device)
    f = torch.as_tensor(faces, dtype=torch.long, device=dev)
    face_id, bary = rasterize_uv(torch.as_tensor(uvs, device=dev), f, size)
    covered = face_id >= 0
    fid, w = face_id[covered], bary[covered]
    v = torch.as_tensor(vertices, dtype=torch.float32, device=dev)
    n = torch.as_tensor(normals, dtype=torch.float32, device=dev)
    tri = f[fid]  # [k, 3]
    points = (w[:, :, None] * v[tri]).sum(1)
    nrm = torch.nn.functional.normalize((w[:, :, None] * n[tri]).sum(1), dim=-1)
    rgb = torch.zeros((size * size, 3), dtype=torch.float32, device=dev)
    if len(points):
        colour = vertex_colors(radiance_fn, points, nrm, voxel, dev, chunk=chunk, check_cancel=check_cancel)
        rgb[covered] = torch.as_tensor(colour, device=dev)
    tex = dilate(rgb.reshape(size, size, 3), covered.reshape(size, size))
    return _to_u8(tex.clamp(0, 1).cpu().numpy())


def texture_mesh(radiance_fn: RadianceFn | None, vertices: np.ndarray, faces: np.ndarray, *, texture_size: int,
                 voxel: float, device: torch.device | str, target_faces: int | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 check_cancel: Callable[[], None] | None = None,
                 timings: dict[str, float] | None = None) -> TexturedMesh:
    """Decimate, unwrap and bake: a textured mesh of a marching-cubes surface (model coordinates).

    Args:
        radiance_fn: ``(x, dirs) -> (rgb, sigma)``; None gives a grey texture.
        vertices: ``(n, 3)`` float32. faces: ``(m, 3)`` int32, counter-clockwise from outside.
        texture_size: texels per side (the protocol offers :data:`TEXTURE_SIZES`; tests use smaller).
        voxel: the meshing grid's cell size (model units).
        target_faces: see :func:`auto_target_faces`.
        timings: if given, filled with seconds per stage (decimate, unwrap, bake).

    Raises:
        ValueError: a texture size outside 16..4096.
    """
    import time

    if not 16 <= texture_size <= max(TEXTURE_SIZES):
        raise ValueError(f"texture size must be between 16 and {max(TEXTURE_SIZES)}, got {texture_size}")
    report = progress or (lambda *_: None)
    check = check_cancel or (lambda: None)
    clock = timings if timings is not None else {}
    t = time.perf_counter()
    target = auto_target_faces(len(faces), target_faces)
    if target is not None:
        report("decimating", 0, 3)
        vertices, faces = decimate(vertices, faces, target)
    clock["decimate"] = time.perf_counter() - t
    check()
    report("unwrapping", 1, 3)
    t = time.perf_counter()
    normals = vertex_normals(vertices, faces)
    vmap, uv_faces, uvs = unwrap(vertices, faces, texture_size)
    clock["unwrap"] = time.perf_counter() - t
    check()
    report("baking texture", 2, 3)
    t = time.perf_counter()
    verts, nrms = vertices[vmap], normals[vmap]
    if radiance_fn is None:
        tex = np.full((texture_size, texture_size, 3), 204, np.uint8)
    else:
        # Texels per field call: 2M samples on a GPU; on the CPU small enough to check cancels often.
        chunk = 1 << 16 if torch.device(device).type == "cuda" else 1 << 10
        tex = bake_texture(radiance_fn, verts, uv_faces, uvs, nrms, texture_size, voxel, device,
                           chunk=chunk, check_cancel=check)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    clock["bake"] = time.perf_counter() - t
    return TexturedMesh(verts.astype(np.float32), uv_faces, uvs, tex, nrms.astype(np.float32))
