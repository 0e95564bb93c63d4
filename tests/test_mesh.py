"""Mesh extraction on an analytic density: a coloured sphere of known radius, plus floaters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.outputs.mesh import DEFAULT_ISOLEVEL, extract_mesh
from backend.outputs.ply import read_ply, write_ply

RADIUS = 0.6
CENTER = torch.tensor([0.1, -0.05, 0.0])


def sphere_density(x: torch.Tensor) -> torch.Tensor:
    """Dense (1000) inside a sphere, with a small dense floater far away and a faint haze everywhere."""
    inside = (x - CENTER).norm(dim=-1) < RADIUS
    floater = (x - torch.tensor([0.85, 0.85, 0.85])).norm(dim=-1) < 0.05
    return torch.where(inside | floater, 1000.0, 5.0)  # haze of 5 stays under the isolevel rule


def sphere_radiance(x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sphere's field: red on its upper half, blue below, seen from any direction."""
    up = (x[:, 2] - CENTER[2]) > 0
    rgb = torch.where(up[:, None], torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    return rgb, sphere_density(x)


def test_sphere_mesh_lies_on_the_sphere_with_the_right_colours(tmp_path: Path) -> None:
    res = 64
    mesh = extract_mesh(sphere_density, sphere_radiance, resolution=res)
    voxel = 2.0 / res
    r = np.linalg.norm(mesh.vertices - CENTER.numpy(), axis=1)
    assert len(mesh.vertices) > 1000
    assert np.abs(r - RADIUS).max() < voxel, "every vertex within a voxel of the true sphere"
    # The floater is gone: no vertex near it.
    assert np.linalg.norm(mesh.vertices - 0.85, axis=1).min() > 0.2
    # Outward winding: face normals point away from the centre.
    v = mesh.vertices
    a, b, c = v[mesh.faces[:, 0]], v[mesh.faces[:, 1]], v[mesh.faces[:, 2]]
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), (a + b + c) / 3 - CENTER.numpy())
    assert (outward > 0).mean() > 0.99
    # Colours: red above the equator, blue below (away from the equator band).
    z = mesh.vertices[:, 2] - CENTER[2].item()
    top, bottom = z > 2 * voxel, z < -2 * voxel
    assert (mesh.colors[top, 0] == 255).all() and (mesh.colors[top, 2] == 0).all()
    assert (mesh.colors[bottom, 2] == 255).all() and (mesh.colors[bottom, 0] == 0).all()
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.colors.dtype == np.uint8
    # PLY round trip.
    write_ply(tmp_path / "m.ply", mesh.vertices, mesh.faces, mesh.colors)
    v2, f2, c2 = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(v2, mesh.vertices)
    np.testing.assert_array_equal(f2, mesh.faces)
    np.testing.assert_array_equal(c2, mesh.colors)


def test_keep_largest_only_and_isolevel_rule() -> None:
    def two_spheres(x: torch.Tensor) -> torch.Tensor:
        a = (x - torch.tensor([-0.5, 0, 0])).norm(dim=-1) < 0.3
        b = (x - torch.tensor([0.5, 0, 0])).norm(dim=-1) < 0.25
        return torch.where(a | b, 500.0, 0.0)

    both = extract_mesh(two_spheres, None, resolution=48)
    one = extract_mesh(two_spheres, None, resolution=48, keep_largest_only=True)
    assert (both.vertices[:, 0] > 0).any() and not (one.vertices[:, 0] > 0).any()
    assert 60 < DEFAULT_ISOLEVEL < 80


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"resolution": 100000}, "between 16 and 1024"),
    ({"resolution": 4}, "between 16 and 1024"),
    ({"isolevel": -1.0}, "positive"),
    ({"isolevel": float("nan")}, "positive"),
    ({"aabb": (1.0, -1.0)}, "bounding box"),
    ({"isolevel": 1e5}, "no surface"),
])
def test_nonsense_input_gets_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extract_mesh(sphere_density, None, **{"resolution": 16, **kwargs})
