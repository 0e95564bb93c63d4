"""Packed (ragged) samples along rays, in nerfacc's vocabulary.

A batch of ``n_rays`` rays carries ``all_samples`` samples in total, sorted by ray and, within a ray, by
distance. ``ray_indices[i]`` is the ray of sample ``i``; ``packed_info[r] = [start, count]`` says that ray
``r`` owns samples ``start .. start + count - 1`` (``start`` is the exclusive prefix sum of the counts,
also for rays with no samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def packed_info_from_ray_indices(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:  # [all_samples] -> [n_rays, 2]
    """``packed_info`` ``(n_rays, 2)`` int64 ``[start, count]`` from sorted ``ray_indices`` ``(all_samples,)``.

    Indices must lie in ``[0, n_rays)`` (not checked: the check would cost a device sync). Counting with
    ``index_add`` rather than ``bincount`` avoids the host sync that ``bincount`` needs on CUDA.
    """
    if ray_indices.ndim != 1:
        raise ValueError(f"ray_indices must have shape (all_samples,), got {tuple(ray_indices.shape)}")
    counts = torch.zeros(n_rays, dtype=torch.int64, device=ray_indices.device)
    counts.index_add_(0, ray_indices, torch.ones_like(ray_indices, dtype=torch.int64))
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


@dataclass
class PackedSamples:
    """Samples of a ray batch, packed and sorted by ray (then by ``t``).

    Attributes:
        ray_indices: ``(all_samples,)`` int64, the ray of each sample.
        t_starts: ``(all_samples,)`` float32 start of each sample's interval along its ray (model units;
            ray directions are unit length, so ``t`` is a distance).
        t_ends: ``(all_samples,)`` float32 end of each interval.
        packed_info: ``(n_rays, 2)`` int64 ``[start, count]`` per ray.
        positions: ``(all_samples, 3)`` float32 model-coordinate points at which the field is evaluated
            (``rays_o + rays_d * (t_starts + t_ends) / 2``, computed once and stored, so that a later
            pass evaluates exactly the same points).
    """

    ray_indices: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor
    packed_info: torch.Tensor
    positions: torch.Tensor

    def __post_init__(self) -> None:
        n = self.ray_indices.shape[0]
        if self.ray_indices.ndim != 1:
            raise ValueError(f"ray_indices must have shape (all_samples,), got {tuple(self.ray_indices.shape)}")
        for name in ("t_starts", "t_ends"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(getattr(self, name).shape)}")
        if self.positions.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3), got {tuple(self.positions.shape)}")
        if self.packed_info.ndim != 2 or self.packed_info.shape[1] != 2:
            raise ValueError(f"packed_info must have shape (n_rays, 2), got {tuple(self.packed_info.shape)}")

    @property
    def n_rays(self) -> int:
        return int(self.packed_info.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.ray_indices.shape[0])

    def ray_slice(self, start: int, stop: int) -> PackedSamples:
        """The samples of rays ``start .. stop - 1``, re-indexed so that ray ``start`` becomes ray 0.

        Rays are contiguous in the packed layout, so this is a view-like slice (one host sync to read the
        two sample offsets).
        """
        if not 0 <= start <= stop <= self.n_rays:
            raise ValueError(f"ray range [{start}, {stop}) is outside [0, {self.n_rays}]")
        if start == stop:
            return PackedSamples(
                ray_indices=self.ray_indices[:0], t_starts=self.t_starts[:0], t_ends=self.t_ends[:0],
                packed_info=self.packed_info[:0], positions=self.positions[:0],
            )
        info = self.packed_info[start:stop]
        bounds = torch.stack([info[0, 0], info[-1, 0] + info[-1, 1]]).tolist()
        s0, s1 = int(bounds[0]), int(bounds[1])
        return PackedSamples(
            ray_indices=self.ray_indices[s0:s1] - start,
            t_starts=self.t_starts[s0:s1],
            t_ends=self.t_ends[s0:s1],
            packed_info=torch.stack([info[:, 0] - s0, info[:, 1]], dim=-1),
            positions=self.positions[s0:s1],
        )

    def to(self, device: torch.device | str) -> PackedSamples:
        return PackedSamples(
            ray_indices=self.ray_indices.to(device), t_starts=self.t_starts.to(device),
            t_ends=self.t_ends.to(device), packed_info=self.packed_info.to(device),
            positions=self.positions.to(device),
        )

    @staticmethod
    def cat(parts: list[PackedSamples]) -> PackedSamples:
        """Concatenate the samples of consecutive ray chunks (ray indices are offset accordingly)."""
        if not parts:
            raise ValueError("cat needs at least one PackedSamples")
        ray_off, sample_off = 0, 0
        ri, info = [], []
        for p in parts:
            ri.append(p.ray_indices + ray_off)
            info.append(torch.stack([p.packed_info[:, 0] + sample_off, p.packed_info[:, 1]], dim=-1))
            ray_off += p.n_rays
            sample_off += p.n_samples
        return PackedSamples(
            ray_indices=torch.cat(ri), t_starts=torch.cat([p.t_starts for p in parts]),
            t_ends=torch.cat([p.t_ends for p in parts]), packed_info=torch.cat(info),
            positions=torch.cat([p.positions for p in parts]),
        )
