"""The radiance field: hash grid -> density MLP -> (density, geometry features) -> colour MLP.

Parameters are split the way stylization needs them (NeRF-Art spec, Section 10, ``colour_only``):
everything that determines density (hash table and density MLP) is :meth:`HashNeRFField.density_parameters`;
the colour MLP is :meth:`HashNeRFField.colour_parameters`. Freezing the first set leaves geometry unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .contraction import SceneDomain
from .hashgrid import HashGridEncoding


class _TruncExp(torch.autograd.Function):
    """``exp`` whose backward clamps its argument, so one large pre-activation cannot blow up Adam (ngp)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` with the gradient of ``exp(min(x, 15))``."""
    return _TruncExp.apply(x)


def spherical_harmonics_deg4(dirs: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, 16]
    """Real spherical harmonics up to degree 3 (16 coefficients, tiny-cuda-nn's ``SphericalHarmonics`` deg 4).

    Args:
        dirs: ``(N, 3)`` unit directions.

    Returns:
        ``(N, 16)`` basis values.
    """
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        dim=-1,
    )


def _mlp(in_dim: int, hidden: int, out_dim: int, n_hidden_layers: int, device: torch.device | str) -> nn.Sequential:
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(dim, hidden, bias=False, device=device), nn.ReLU()]
        dim = hidden
    # Bias-free layers as in tiny-cuda-nn's FullyFusedMLP, whose results we want to be comparable with.
    layers.append(nn.Linear(dim, out_dim, bias=False, device=device))
    return nn.Sequential(*layers)


@dataclass
class FieldConfig:
    """Architecture of :class:`HashNeRFField` (instant-ngp's NeRF defaults)."""

    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    hidden_dim: int = 64
    geo_feat_dim: int = 15
    colour_hidden_layers: int = 2
    density_bias: float = -1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FieldConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class HashNeRFField(nn.Module):
    """instant-ngp's NeRF network over a :class:`~backend.nerf.contraction.SceneDomain`.

    ``x`` (model coordinates) -> unit cube -> hash grid ``(L*F)`` -> density MLP (one hidden layer) ->
    ``1 + geo_feat_dim`` outputs; the first is the density pre-activation (``trunc_exp``), all of them
    together with the SH-encoded view direction feed the colour MLP (sigmoid RGB).

    Points outside the domain (outside the box, for a bounded scene) have density 0.
    """

    def __init__(self, config: FieldConfig, domain: SceneDomain, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.domain = domain
        self.encoding = HashGridEncoding(
            n_levels=config.n_levels, n_features=config.n_features, log2_table_size=config.log2_table_size,
            base_resolution=config.base_resolution, max_resolution=config.max_resolution, device=device,
        )
        self.density_mlp = _mlp(self.encoding.output_dim, config.hidden_dim, 1 + config.geo_feat_dim, 1, device)
        self.colour_mlp = _mlp(16 + 1 + config.geo_feat_dim, config.hidden_dim, 3, config.colour_hidden_layers, device)
        # Optional reduced-precision MLPs (torch.autocast, local to this module): None keeps float32.
        # Parameters and the hash grid stay float32 either way.
        self.mlp_dtype: torch.dtype | None = None

    # -- parameter groups -------------------------------------------------------------------------
    def density_parameters(self) -> list[nn.Parameter]:
        """Everything that determines density: the hash table and the density MLP."""
        return list(self.encoding.parameters()) + list(self.density_mlp.parameters())

    def colour_parameters(self) -> list[nn.Parameter]:
        """The colour MLP only (training these alone leaves geometry unchanged)."""
        return list(self.colour_mlp.parameters())

    # -- evaluation -------------------------------------------------------------------------------
    def _geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.domain.to_unit_cube(x)
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        feats = self.encoding(u)
        with torch.autocast(x.device.type, dtype=self.mlp_dtype or torch.bfloat16, enabled=self.mlp_dtype is not None):
            h = self.density_mlp(feats)
        h = h.float()
        sigma = trunc_exp(h[:, 0] + self.config.density_bias) * inside.to(h.dtype)
        return sigma, h

    def density(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        """Volume density at model-coordinate points.

        Args:
            x: ``(N, 3)`` float32 points in model coordinates.

        Returns:
            ``(N,)`` non-negative densities (per model unit of length).
        """
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"x must have shape (N, 3), got {tuple(x.shape)}")
        return self._geometry(x)[0]

    def forward(self, x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour and density.

        Args:
            x: ``(N, 3)`` points in model coordinates.
            dirs: ``(N, 3)`` unit view directions (ray directions, pointing away from the camera).

        Returns:
            ``rgb`` ``(N, 3)`` in ``[0, 1]`` and ``sigmas`` ``(N,)``.
        """
        if x.ndim != 2 or x.shape[-1] != 3 or dirs.shape != x.shape:
            raise ValueError(f"x and dirs must both have shape (N, 3), got {tuple(x.shape)} and {tuple(dirs.shape)}")
        sigma, h = self._geometry(x)
        inp = torch.cat([h, spherical_harmonics_deg4(dirs)], dim=-1)
        with torch.autocast(x.device.type, dtype=self.mlp_dtype or torch.bfloat16, enabled=self.mlp_dtype is not None):
            raw = self.colour_mlp(inp)
        return torch.sigmoid(raw.float()), sigma
