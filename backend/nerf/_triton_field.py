"""The whole radiance field in one Triton kernel, for rendering frames (no gradients).

Why: profiling a 512x512 frame of a trained fangzhou model (bench/profile_render.py, H100) showed the
separate kernels spending their time moving intermediates through memory: the hash encoding writes
``(N, 32)`` float32 features, each ``Linear`` writes an ``(N, 64)`` float32 hidden layer that a separate
ReLU kernel reads and writes again. Here one program takes ``BLOCK`` samples from position and direction
to colour and density with everything in registers: per sample it reads 24 bytes and writes 16.

Precision: the hash table and the weights are float16 copies (the table then fits the H100's L2 cache);
gathers, interpolation and all accumulations are float32, matrix products run on the tensor cores with
float32 accumulation. ``tests/test_nerf_triton.py`` bounds the difference to the float32 field.

Supports the default architecture only (2 features per level, a power-of-two number of levels >= 16,
power-of-two hidden width >= 16, ``1 + geo_feat_dim == 16``, two hidden colour layers);
:func:`fused_field_supported` says whether a field qualifies, and callers fall back to the PyTorch field.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._triton_hashgrid import _corner_rows
from ._triton_march import _boundary, _schedule_setup, unit_cube
from .field import HashNeRFField
from .marching import MarchSettings


@triton.jit
def _sh_matrix(dx, dy, dz, cols):
    """``(BLOCK, 16)`` spherical-harmonics basis of unit directions (columns as in the PyTorch twin)."""
    xx = dx * dx
    yy = dy * dy
    zz = dz * dz
    c = cols[None, :]
    sh = tl.where(c == 0, 0.28209479177387814, 0.0) + tl.zeros_like(dx)[:, None]
    sh = tl.where(c == 1, (-0.48860251190291987 * dy)[:, None], sh)
    sh = tl.where(c == 2, (0.48860251190291987 * dz)[:, None], sh)
    sh = tl.where(c == 3, (-0.48860251190291987 * dx)[:, None], sh)
    sh = tl.where(c == 4, (1.0925484305920792 * dx * dy)[:, None], sh)
    sh = tl.where(c == 5, (-1.0925484305920792 * dy * dz)[:, None], sh)
    sh = tl.where(c == 6, (0.94617469575755997 * zz - 0.31539156525251999)[:, None], sh)
    sh = tl.where(c == 7, (-1.0925484305920792 * dx * dz)[:, None], sh)
    sh = tl.where(c == 8, (0.54627421529603959 * (xx - yy))[:, None], sh)
    sh = tl.where(c == 9, (0.59004358992664352 * dy * (-3.0 * xx + yy))[:, None], sh)
    sh = tl.where(c == 10, (2.8906114426405538 * dx * dy * dz)[:, None], sh)
    sh = tl.where(c == 11, (0.45704579946446572 * dy * (1.0 - 5.0 * zz))[:, None], sh)
    sh = tl.where(c == 12, (0.3731763325901154 * dz * (5.0 * zz - 3.0))[:, None], sh)
    sh = tl.where(c == 13, (0.45704579946446572 * dx * (1.0 - 5.0 * zz))[:, None], sh)
    sh = tl.where(c == 14, (1.4453057213202769 * dz * (xx - yy))[:, None], sh)
    sh = tl.where(c == 15, (0.59004358992664352 * dx * (-xx + 3.0 * yy))[:, None], sh)
    return sh


@triton.jit
def _load_matrix(ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    r = tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    return tl.load(ptr + r[:, None] * COLS + c[None, :])


@triton.jit
def _field_eval(x0, x1, x2, d0, d1, d2, m, table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr,
                w1e_ptr, w1o_ptr, w2_ptr, wc1h_ptr, wc1s_ptr, wc2_ptr, wc3_ptr, bound, density_bias,
                CONTRACT: tl.constexpr, L: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr):
    """Colour logits ``(BLOCK, 16)`` (first 3 columns used) and density ``(BLOCK,)`` of BLOCK samples."""
    u0, u1, u2, inside = unit_cube(x0, x1, x2, bound, CONTRACT)
    u0 = tl.minimum(tl.maximum(u0, 0.0), 1.0)
    u1 = tl.minimum(tl.maximum(u1, 0.0), 1.0)
    u2 = tl.minimum(tl.maximum(u2, 0.0), 1.0)

    # Hash encoding, every level at once: (BLOCK, L) cells; the two features of a table row are one 32-bit
    # gather (two float16), split by bit casts.
    lv = tl.arange(0, L)
    res = tl.load(res_ptr + lv)[None, :]
    offset = tl.load(offset_ptr + lv)[None, :]
    size_mask = tl.load(size_ptr + lv)[None, :] - 1
    dense = tl.load(dense_ptr + lv).to(tl.int32)[None, :]
    stride = res.to(tl.int64) + 1
    p0 = u0[:, None] * res
    p1 = u1[:, None] * res
    p2 = u2[:, None] * res
    fb0 = tl.minimum(tl.floor(p0), res - 1.0)
    fb1 = tl.minimum(tl.floor(p1), res - 1.0)
    fb2 = tl.minimum(tl.floor(p2), res - 1.0)
    b0 = fb0.to(tl.int64)
    b1 = fb1.to(tl.int64)
    b2 = fb2.to(tl.int64)
    f0 = p0 - fb0
    f1 = p1 - fb1
    f2 = p2 - fb2
    feat0 = tl.zeros((BLOCK, L), dtype=tl.float32)
    feat1 = tl.zeros((BLOCK, L), dtype=tl.float32)
    for corner in tl.static_range(8):
        row, w = _corner_rows(b0, b1, b2, f0, f1, f2, corner, stride, dense, size_mask, offset)
        packed = tl.load(table_ptr + row, mask=m[:, None], other=0)
        v0 = (packed & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        v1 = ((packed >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        feat0 += w * v0
        feat1 += w * v1

    # Density MLP: (L*2) -> H -> 16 (no biases). Feature 2l+0 and 2l+1 rows of W1 are w1e and w1o.
    h1 = tl.dot(feat0.to(tl.float16), _load_matrix(w1e_ptr, L, H))
    h1 = tl.dot(feat1.to(tl.float16), _load_matrix(w1o_ptr, L, H), h1)
    h1 = tl.maximum(h1, 0.0)
    h = tl.dot(h1.to(tl.float16), _load_matrix(w2_ptr, H, 16))
    cols = tl.arange(0, 16)
    raw_sigma = tl.sum(tl.where(cols[None, :] == 0, h, 0.0), axis=1)
    sigma = tl.exp(raw_sigma + density_bias) * inside.to(tl.float32)
    # Colour MLP: [h (16), SH(dir) (16)] -> H -> H -> 3 (the last layer zero-padded to 16 outputs).
    sh = _sh_matrix(d0, d1, d2, cols)
    c = tl.dot(h.to(tl.float16), _load_matrix(wc1h_ptr, 16, H))
    c = tl.dot(sh.to(tl.float16), _load_matrix(wc1s_ptr, 16, H), c)
    c = tl.maximum(c, 0.0)
    c = tl.maximum(tl.dot(c.to(tl.float16), _load_matrix(wc2_ptr, H, H)), 0.0)
    o = tl.dot(c.to(tl.float16), _load_matrix(wc3_ptr, H, 16))
    return o, sigma


@triton.jit
def _field_kernel(x_ptr, d_ptr, table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr,
                  w1e_ptr, w1o_ptr, w2_ptr, wc1h_ptr, wc1s_ptr, wc2_ptr, wc3_ptr,
                  rgb_ptr, sigma_ptr, n, bound, density_bias,
                  CONTRACT: tl.constexpr, L: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x0 = tl.load(x_ptr + offs * 3 + 0, mask=m, other=0.0)
    x1 = tl.load(x_ptr + offs * 3 + 1, mask=m, other=0.0)
    x2 = tl.load(x_ptr + offs * 3 + 2, mask=m, other=0.0)
    d0 = tl.load(d_ptr + offs * 3 + 0, mask=m, other=0.0)
    d1 = tl.load(d_ptr + offs * 3 + 1, mask=m, other=0.0)
    d2 = tl.load(d_ptr + offs * 3 + 2, mask=m, other=0.0)
    o, sigma = _field_eval(x0, x1, x2, d0, d1, d2, m, table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr,
                           w1e_ptr, w1o_ptr, w2_ptr, wc1h_ptr, wc1s_ptr, wc2_ptr, wc3_ptr, bound, density_bias,
                           CONTRACT, L, H, BLOCK)
    tl.store(sigma_ptr + offs, sigma, mask=m)
    cols = tl.arange(0, 16)
    rgb = 1.0 / (1.0 + tl.exp(-o))
    tl.store(rgb_ptr + offs[:, None] * 3 + cols[None, :], rgb, mask=m[:, None] & (cols[None, :] < 3))


@triton.jit
def _window_kernel(ray_ptr, step_ptr, rays_o_ptr, rays_d_ptr, s0_ptr, t_max_ptr,
                   dt_min, dt_max, a, b, g, table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr,
                   w1e_ptr, w1o_ptr, w2_ptr, wc1h_ptr, wc1s_ptr, wc2_ptr, wc3_ptr,
                   rgb_ptr, sd_ptr, t_mid_ptr, n, bound, density_bias,
                   CONE: tl.constexpr, CONTRACT: tl.constexpr, L: tl.constexpr, H: tl.constexpr,
                   BLOCK: tl.constexpr):
    # Samples given as (ray, step) of the closed-form step schedule (marching.step_boundaries): the interval,
    # position and direction are computed here instead of by a dozen gather/elementwise passes in PyTorch.
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ray = tl.load(ray_ptr + offs, mask=m, other=0)
    kf = tl.load(step_ptr + offs, mask=m, other=0).to(tl.float32)
    s0 = tl.load(s0_ptr + ray, mask=m, other=0.0)
    t_max = tl.load(t_max_ptr + ray, mask=m, other=1.0)
    k_a, s_a, k_b, s_b = _schedule_setup(s0, dt_min, dt_max, a, b, g, CONE)
    t0 = _boundary(kf, s0, k_a, s_a, k_b, s_b, dt_min, dt_max, g, CONE)
    t1 = tl.minimum(_boundary(kf + 1.0, s0, k_a, s_a, k_b, s_b, dt_min, dt_max, g, CONE), t_max)
    mid = 0.5 * (t0 + t1)
    d0 = tl.load(rays_d_ptr + ray * 3 + 0, mask=m, other=0.0)
    d1 = tl.load(rays_d_ptr + ray * 3 + 1, mask=m, other=0.0)
    d2 = tl.load(rays_d_ptr + ray * 3 + 2, mask=m, other=0.0)
    x0 = tl.load(rays_o_ptr + ray * 3 + 0, mask=m, other=0.0) + d0 * mid
    x1 = tl.load(rays_o_ptr + ray * 3 + 1, mask=m, other=0.0) + d1 * mid
    x2 = tl.load(rays_o_ptr + ray * 3 + 2, mask=m, other=0.0) + d2 * mid
    o, sigma = _field_eval(x0, x1, x2, d0, d1, d2, m, table_ptr, res_ptr, offset_ptr, size_ptr, dense_ptr,
                           w1e_ptr, w1o_ptr, w2_ptr, wc1h_ptr, wc1s_ptr, wc2_ptr, wc3_ptr, bound, density_bias,
                           CONTRACT, L, H, BLOCK)
    tl.store(sd_ptr + offs, sigma * (t1 - t0), mask=m)
    tl.store(t_mid_ptr + offs, mid, mask=m)
    cols = tl.arange(0, 16)
    rgb = 1.0 / (1.0 + tl.exp(-o))
    tl.store(rgb_ptr + offs[:, None] * 3 + cols[None, :], rgb, mask=m[:, None] & (cols[None, :] < 3))


def fused_field_supported(field: HashNeRFField) -> str | None:
    """None when :class:`FusedField` can evaluate ``field``, otherwise why not."""
    cfg = field.config
    enc = field.encoding
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernel on the CPU: the tests use it where no GPU is.
    if enc.table.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the fused field kernel needs a CUDA device"
    if cfg.n_features != 2:
        return f"n_features={cfg.n_features} (the fused kernel packs exactly 2 features per table row)"
    for name, v in (("n_levels", cfg.n_levels), ("hidden_dim", cfg.hidden_dim)):
        if v < 16 or v & (v - 1):
            return f"{name}={v} (the fused kernel needs a power of two >= 16)"
    if cfg.geo_feat_dim + 1 != 16:
        return f"geo_feat_dim={cfg.geo_feat_dim} (the fused kernel needs 15)"
    if cfg.colour_hidden_layers != 2:
        return f"colour_hidden_layers={cfg.colour_hidden_layers} (the fused kernel needs 2)"
    return None


class FusedField:
    """Float16 snapshot of a :class:`HashNeRFField` evaluated by one fused kernel (inference only).

    The snapshot is taken at construction: build a new one after the field's parameters change.
    """

    # Measured on an H100 (bench/profile_render.py): 128 samples and 8 warps per program beat 32/2, 64/4,
    # 128/4 and 256/8 at 1080p by 8-35 % and tie at 512x512.
    BLOCK = 128
    NUM_WARPS = 8

    def __init__(self, field: HashNeRFField) -> None:
        why = fused_field_supported(field)
        if why:
            raise ValueError(why)
        enc = field.encoding
        cfg = field.config
        with torch.no_grad():
            # (rows, 2) float16 -> one int32 per row: the kernel gathers both features with one load.
            self.table = enc.table.detach().to(torch.float16).contiguous().view(torch.int32).reshape(-1)
            w1 = field.density_mlp[0].weight.detach().t().float()  # [L*2, H]
            self.w1e = w1[0::2].to(torch.float16).contiguous()  # [L, H]
            self.w1o = w1[1::2].to(torch.float16).contiguous()
            self.w2 = field.density_mlp[2].weight.detach().t().to(torch.float16).contiguous()  # [H, 16]
            wc1 = field.colour_mlp[0].weight.detach().t()  # [32, H]: h rows then SH rows
            self.wc1h = wc1[:16].to(torch.float16).contiguous()
            self.wc1s = wc1[16:].to(torch.float16).contiguous()
            self.wc2 = field.colour_mlp[2].weight.detach().t().to(torch.float16).contiguous()  # [H, H]
            wc3 = field.colour_mlp[4].weight.detach().t()  # [H, 3]
            self.wc3 = torch.zeros(wc3.shape[0], 16, device=wc3.device, dtype=torch.float16)
            self.wc3[:, :3] = wc3.to(torch.float16)
        self.level_resolution = enc.level_resolution
        self.level_offset = enc.level_offset
        self.level_size = enc.level_size
        self.level_dense = enc.level_dense
        self.n_levels = cfg.n_levels
        self.hidden = cfg.hidden_dim
        self.density_bias = float(cfg.density_bias)
        self.contract = field.domain.kind == "contract"
        self.bound = float(field.domain.bound)

    def __call__(
        self,
        x: torch.Tensor,  # [N, 3] float32 model coordinates
        dirs: torch.Tensor,  # [N, 3] float32 unit directions
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [N, 3], [N]
        """``rgb (N, 3)`` in [0, 1] and ``sigma (N,)``, float32, like ``HashNeRFField.forward``."""
        if x.ndim != 2 or x.shape[-1] != 3 or dirs.shape != x.shape:
            raise ValueError(f"x and dirs must both have shape (N, 3), got {tuple(x.shape)} and {tuple(dirs.shape)}")
        n = x.shape[0]
        x = x.float().contiguous()
        dirs = dirs.float().contiguous()
        rgb = torch.empty(n, 3, device=x.device, dtype=torch.float32)
        sigma = torch.empty(n, device=x.device, dtype=torch.float32)
        if n > 0:
            _field_kernel[(triton.cdiv(n, self.BLOCK),)](
                x, dirs, self.table, self.level_resolution, self.level_offset, self.level_size, self.level_dense,
                self.w1e, self.w1o, self.w2, self.wc1h, self.wc1s, self.wc2, self.wc3, rgb, sigma, n,
                self.bound, self.density_bias, CONTRACT=self.contract, L=self.n_levels, H=self.hidden,
                BLOCK=self.BLOCK, num_warps=self.NUM_WARPS,
            )
        return rgb, sigma

    def window(
        self,
        rays_o: torch.Tensor,  # [n_rays, 3] float32
        rays_d: torch.Tensor,  # [n_rays, 3] float32 unit directions
        s0: torch.Tensor,  # [n_rays] float32 first step boundary of each ray
        t_max: torch.Tensor,  # [n_rays] float32 end of each ray's interval
        ray: torch.Tensor,  # [N] int64 sample's ray
        step: torch.Tensor,  # [N] int64 sample's step number
        settings: MarchSettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [N, 3], [N], [N]
        """Samples given as ``(ray, step)`` of the step schedule: ``rgb (N, 3)``, optical thickness
        ``sigma * (t1 - t0)`` ``(N,)`` and interval midpoint ``t_mid (N,)``, float32 (the frame renderer's
        inner loop: intervals and positions are computed in the kernel, see :func:`marching._intervals`)."""
        n = ray.shape[0]
        rgb = torch.empty(n, 3, device=ray.device, dtype=torch.float32)
        sd = torch.empty(n, device=ray.device, dtype=torch.float32)
        t_mid = torch.empty(n, device=ray.device, dtype=torch.float32)
        if n == 0:
            return rgb, sd, t_mid
        cone = settings.cone_angle > 0.0
        a = settings.dt_min / settings.cone_angle if cone else 0.0
        b = settings.dt_max / settings.cone_angle if cone else 0.0
        g = math.log1p(settings.cone_angle) if cone else 0.0
        _window_kernel[(triton.cdiv(n, self.BLOCK),)](
            ray.contiguous(), step.contiguous(), rays_o.float().contiguous(), rays_d.float().contiguous(),
            s0.float().contiguous(), t_max.float().contiguous(), float(settings.dt_min), float(settings.dt_max),
            a, b, g, self.table, self.level_resolution, self.level_offset, self.level_size, self.level_dense,
            self.w1e, self.w1o, self.w2, self.wc1h, self.wc1s, self.wc2, self.wc3, rgb, sd, t_mid, n,
            self.bound, self.density_bias, CONE=cone, CONTRACT=self.contract, L=self.n_levels, H=self.hidden,
            BLOCK=self.BLOCK, num_warps=self.NUM_WARPS,
        )
        return rgb, sd, t_mid
