"""Scene domains: a bounded box, or all of space contracted into a ball (mip-NeRF 360).

Both map model coordinates (the ROI is the unit sphere) to the unit cube ``[0, 1]^3`` in which the hash
grid and the occupancy grid live. Model coordinates are what the capture's normalization produces:
``x_model = (x_world - center) / radius``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCENE_KINDS = ("bounded", "contract")


def contract_to_ball(x: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
    """mip-NeRF 360's contraction: identity inside the unit ball, ``(2 - 1/|x|) x/|x|`` outside.

    .. math:: c(x) = x \\text{ if } \\|x\\| \\le 1 \\text{ else } (2 - 1/\\|x\\|)\\, x / \\|x\\|

    All of space maps into the ball of radius 2; the far field gets resolution that falls off as 1/|x|^2,
    which is what a background at unknown depth needs (it does not turn into floaters near the head).
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scale = torch.where(norm <= 1.0, torch.ones_like(norm), (2.0 - 1.0 / norm) / norm)
    return x * scale


def uncontract_from_ball(c: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
    """Inverse of :func:`contract_to_ball` for ``|c| < 2`` (points at ``|c| >= 2`` go to a large finite radius)."""
    norm = c.norm(dim=-1, keepdim=True).clamp(1e-12, 2.0 - 1e-6)
    # |x| = 1 / (2 - |c|) outside the unit ball.
    scale = torch.where(norm <= 1.0, torch.ones_like(norm), 1.0 / ((2.0 - norm) * norm))
    return c * scale


@dataclass(frozen=True)
class SceneDomain:
    """Which part of space the model represents, and how it maps to the unit cube.

    Attributes:
        kind: ``"bounded"`` (an axis-aligned box ``[-bound, bound]^3``; nothing exists outside it) or
            ``"contract"`` (all of space, contracted into the ball of radius 2, then into the cube).
        bound: half size of the box in model units (``"bounded"`` only).
    """

    kind: str = "bounded"
    bound: float = 1.5

    def __post_init__(self) -> None:
        if self.kind not in SCENE_KINDS:
            raise ValueError(f"scene kind must be one of {SCENE_KINDS}, got {self.kind!r}")
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")

    def to_unit_cube(self, x: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
        """Model coordinates to the unit cube of the grids (values outside ``[0, 1]`` are outside the domain)."""
        if self.kind == "bounded":
            return (x + self.bound) / (2.0 * self.bound)
        return (contract_to_ball(x) + 2.0) / 4.0

    def from_unit_cube(self, u: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3]
        """Inverse of :meth:`to_unit_cube` (for occupancy updates, which sample the cube)."""
        if self.kind == "bounded":
            return u * (2.0 * self.bound) - self.bound
        return uncontract_from_ball(u * 4.0 - 2.0)
