"""The geometry-stylization instruments of backend.stylize.evaluation (issue 20): haze in front of the surface,
opacity outside the silhouette, and the silhouette's change, all measured against F_rec's own renders (no matte).

The scenes are hand-made NeRFs whose shape is their occupancy grid: the hash table is zero, so the density is one
constant wherever a ray is marched (exp of the density bias) and nothing elsewhere. At that density a ball is
opaque, a single layer of cells is a semi-transparent sheet (a cloud), and a block several cells deep is a solid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from backend.nerf import NeRFCheckpoint, NeRFModel, ReconstructConfig
from backend.nerf.synthetic import ring_cameras
from backend.stylize.evaluation import (
    geometry_change,
    haze_change,
    opacity_before_t,
    outline_mask,
    render_front_opacity,
    render_views,
    silhouette_change,
    surface_t_from_weights,
)
from captures import Cameras
from captures.normalize import Normalization

# One cell of a 128^3 grid over the box [-1.5, 1.5]^3 is 0.0234 model units: at this density a layer of one cell
# stops half the light (a cloud), a ball of radius 0.5 stops all of it, and 0.1 units stop 95 %.
DENSITY = 30.0
RESOLUTION = 128
CELL = 3.0 / RESOLUTION
Shape = Callable[[torch.Tensor], torch.Tensor]  # (N, 3) model points -> (N,) bool


def occupancy_checkpoint(occupied: Shape, normalization: Normalization | None = None) -> NeRFCheckpoint:
    """A NeRF of constant density in the cells whose centre ``occupied`` accepts, and nothing elsewhere."""
    base = ReconstructConfig.tiny().model_config("matte", separate_matte=False, pixel_footprint=None)
    # A one-level, tiny hash grid: its (zero) features cost nothing to evaluate.
    field = dataclasses.replace(base.field, density_bias=math.log(DENSITY), n_levels=1, base_resolution=2,
                                max_resolution=2, log2_table_size=6, hidden_dim=8, geo_feat_dim=3)
    config = dataclasses.replace(base, field=field, occupancy_resolution=RESOLUTION, render_steps=512)
    model = NeRFModel(config)
    with torch.no_grad():
        model.field.encoding.table.zero_()  # bias-free MLPs on zero features: density exp(density_bias) everywhere
        u = (model.occupancy.cell_coords.float() + 0.5) / RESOLUTION
        model.occupancy.binary.copy_(occupied(model.domain.from_unit_cube(u)).view(model.occupancy.binary.shape))
    return NeRFCheckpoint(model=model, config=ReconstructConfig.tiny(), background="matte",
                          normalization=normalization)


def ball(x: torch.Tensor, radius: float = 0.5) -> torch.Tensor:
    return x.norm(dim=-1) < radius


def layer(x: torch.Tensor, at: float, half: float = 0.15) -> torch.Tensor:
    """One layer of cells across the x axis at ``x = at``, ``2 half`` wide in y and z: between camera 0 and the
    ball, inside its silhouette."""
    return ((x[:, 0] - at).abs() < CELL / 2) & (x[:, 1].abs() < half) & (x[:, 2].abs() < half)


def block(x: torch.Tensor) -> torch.Tensor:
    """A solid block (0.3 deep) in front of the ball, as seen by camera 0."""
    return (x[:, 0] > 0.7) & (x[:, 0] < 1.0) & (x[:, 1].abs() < 0.15) & (x[:, 2].abs() < 0.15)


def beside(x: torch.Tensor) -> torch.Tensor:
    """A slab beside the ball, outside its silhouette from camera 0."""
    return (x[:, 1] > 0.85) & (x[:, 1] < 1.0) & (x[:, 2].abs() < 0.4) & (x[:, 0].abs() < 0.1)


@pytest.fixture(scope="module")
def camera() -> Cameras:
    # Camera 0 of a level ring sits on +x, 3 units out, looking at the ball (1 model unit is ~12 pixels).
    return ring_cameras(4, 32, elevation_deg=0.0).select([0])


@pytest.fixture(scope="module")
def rec() -> NeRFCheckpoint:
    return occupancy_checkpoint(ball)


def test_surface_t_and_opacity_before_on_packed_samples() -> None:
    # Ray 0 reaches opacity 0.5 in its second sample; ray 1 never does; ray 2 has no samples.
    weights = torch.tensor([0.2, 0.4, 0.3, 0.1, 0.1])
    t_starts = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0])
    t_ends = t_starts + 1.0
    ray_indices = torch.tensor([0, 0, 0, 1, 1])
    packed_info = torch.tensor([[0, 3], [3, 2], [5, 0]])
    t_surf = surface_t_from_weights(weights, t_starts, ray_indices, packed_info)
    assert t_surf.tolist() == [2.0, math.inf, math.inf]
    assert surface_t_from_weights(weights, t_starts, ray_indices, packed_info, level=0.2).tolist()[0] == 1.0
    front = opacity_before_t(weights, t_ends, ray_indices, torch.tensor([2.5, math.inf, 1.0]))
    torch.testing.assert_close(front, torch.tensor([0.2, 0.2, 0.0]))
    with pytest.raises(ValueError, match="level"):
        surface_t_from_weights(weights, t_starts, ray_indices, packed_info, level=0.0)


def test_no_haze_between_identical_models(rec: NeRFCheckpoint, camera: Cameras) -> None:
    same = occupancy_checkpoint(ball)
    report = haze_change(rec, same, camera)
    assert report.haze == 0.0 and report.haze_max == 0.0 and report.front_solid == 0.0
    assert report.outside_opacity == report.outside_opacity_rec
    # The ball covers part of the frame and its surface is sharp: its own front, before the margin, is nearly empty.
    assert 0.05 < report.opaque_fraction < 0.5 and report.haze_rec < 0.02, report


def test_haze_grows_with_a_cloud_in_front_of_the_surface(rec: NeRFCheckpoint, camera: Cameras) -> None:
    one = haze_change(rec, occupancy_checkpoint(lambda x: ball(x) | layer(x, 0.98)), camera)
    two = haze_change(rec, occupancy_checkpoint(lambda x: ball(x) | layer(x, 0.98) | layer(x, 0.8)), camera)
    summary = {"one": one, "two": two}
    assert one.haze > 0.05 and one.front_solid == 0.0, summary
    assert two.haze > 1.3 * one.haze and two.front_solid == 0.0, summary
    assert one.haze_max == pytest.approx(one.haze)  # a single view
    # In front of the face, not beside it: nothing is added outside the silhouette.
    assert one.outside_opacity < 1e-3 and two.outside_opacity < 1e-3, summary
    # The cloud sits within the margin of the surface: not counted (the margin is the surface's soft skin).
    hugging = haze_change(rec, occupancy_checkpoint(lambda x: ball(x) | layer(x, 0.5 + CELL)), camera,
                          margin_steps=12.0)
    assert hugging.haze < 0.2 * one.haze, (hugging, one)


def test_new_solid_shape_in_front_is_not_haze(rec: NeRFCheckpoint, camera: Cameras) -> None:
    blocked = haze_change(rec, occupancy_checkpoint(lambda x: ball(x) | block(x)), camera)
    assert blocked.front_solid > 0.1 and blocked.haze < 0.01, blocked
    # A ball grown all round moves the whole surface toward the camera: solid everywhere, no haze.
    grown = haze_change(rec, occupancy_checkpoint(lambda x: ball(x, 0.62)), camera)
    assert grown.front_solid > 0.9 and grown.haze < 0.01, grown


def test_outside_opacity_grows_with_density_beside_the_silhouette(rec: NeRFCheckpoint, camera: Cameras) -> None:
    sty = occupancy_checkpoint(lambda x: ball(x) | beside(x))
    report = haze_change(rec, sty, camera)
    assert report.outside_opacity > 0.01 and report.outside_opacity_rec == 0.0, report
    assert report.haze == 0.0 and report.front_solid == 0.0, report
    # A thin sheet beside the head is semi-transparent growth: outside_haze counts it, as outside_opacity does.
    sheet = haze_change(rec, occupancy_checkpoint(lambda x: ball(x) | (beside(x) & (x[:, 0].abs() < CELL / 2))),
                        camera)
    assert sheet.outside_haze > 0.002 and sheet.outside_haze == pytest.approx(sheet.outside_opacity), sheet
    # One definition of "outside": geometry_change's haze is this outside opacity.
    before, after = render_views(rec, camera), render_views(sty, camera)
    assert geometry_change(before, after, 1.0)["haze"] == pytest.approx(report.outside_opacity, abs=1e-6)


def test_haze_is_measured_in_world_units(camera: Cameras) -> None:
    """Checkpoints with a normalization (world = 2.5 model + centre) give the same numbers from the same cameras
    moved to the world, and a surface distance in world units."""
    norm = Normalization(center=np.array([0.3, -0.2, 0.1]), radius=2.5)
    cloud = lambda x: ball(x) | layer(x, 0.98)  # noqa: E731
    model_units = render_front_opacity(occupancy_checkpoint(ball), occupancy_checkpoint(cloud), camera)
    world_cams = norm.cameras_to_world(camera)
    world = render_front_opacity(occupancy_checkpoint(ball, norm), occupancy_checkpoint(cloud, norm), world_cams)
    torch.testing.assert_close(world.front_sty, model_units.front_sty, atol=1e-4, rtol=0)
    torch.testing.assert_close(world.alpha_rec, model_units.alpha_rec, atol=1e-4, rtol=0)
    opaque = model_units.alpha_rec >= 0.5
    torch.testing.assert_close(world.t_surface[opaque], 2.5 * model_units.t_surface[opaque], rtol=1e-4, atol=1e-4)
    assert world.margin == pytest.approx(2.5 * model_units.margin)
    assert bool(torch.isinf(model_units.t_surface[~opaque]).all())


def disc(size: int, radius: float, cy: float | None = None, cx: float | None = None) -> torch.Tensor:
    """``(size, size)`` alpha of a hard disc (pixel centres within ``radius`` pixels of the centre)."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    cy = (size - 1) / 2 if cy is None else cy
    cx = (size - 1) / 2 if cx is None else cx
    return ((y - cy) ** 2 + (x - cx) ** 2 <= radius**2).float()


def test_silhouette_change_of_synthetic_outlines() -> None:
    size = 64
    rec = disc(size, 10)[None]
    same = silhouette_change(rec, rec.clone())
    assert same.area_ratio == 1.0 and same.outline_shift_px == 0.0 and same.outline_max_px == 0.0
    assert same.head_height_px == 20.0 and same.n_views == 1  # rows 22 to 41
    grown = silhouette_change(rec, disc(size, 13)[None])
    assert grown.area_ratio == pytest.approx(13**2 / 10**2, rel=0.08), grown
    assert grown.outline_growth_px == pytest.approx(3.0, abs=0.5) and grown.outline_shift_px == pytest.approx(
        3.0, abs=0.5), grown
    assert grown.outline_growth_rel == pytest.approx(grown.outline_growth_px / 20.0)
    shrunk = silhouette_change(rec, disc(size, 7)[None])
    assert shrunk.outline_growth_px == pytest.approx(-3.0, abs=0.5) and shrunk.area_ratio < 0.6, shrunk
    # A horn: the means move little, the largest displacement is the horn's length.
    horned = disc(size, 10)
    horned[12:22, 31:33] = 1.0  # ten rows above the disc's top row (22)
    horn = silhouette_change(rec, horned[None])
    assert horn.outline_max_px == pytest.approx(10.0, abs=1.5), horn
    assert horn.outline_growth_px < 0.2 * horn.outline_max_px, horn
    assert horn.outline_max_rel == pytest.approx(horn.outline_max_px / 20.0)
    # Views without a silhouette are left out of the outline numbers, not counted as zero.
    both = silhouette_change(torch.stack([rec[0], torch.zeros(size, size)]),
                             torch.stack([disc(size, 13), torch.zeros(size, size)]))
    assert both.n_views == 1 and both.outline_growth_px == pytest.approx(grown.outline_growth_px)


def test_outline_ignores_the_frame_edge() -> None:
    # A subject that runs off the bottom of the frame has no outline along the frame's edge.
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 8:, 4:12] = True
    outline = outline_mask(mask)[0]
    assert not bool(outline[15, 5:11].any()) and bool(outline[8, 4:12].all()) and bool(outline[8:, 4].all())


def test_silhouette_change_of_a_grown_nerf(rec: NeRFCheckpoint, camera: Cameras) -> None:
    before = render_views(rec, camera)
    after = render_views(occupancy_checkpoint(lambda x: ball(x, 0.62)), camera)
    change = silhouette_change(before.alpha, after.alpha)
    # Radius 0.5 -> 0.62 at ~12 pixels per unit (a little more in perspective): ~1.5 pixels out all round.
    assert change.area_ratio > 1.3 and 1.0 < change.outline_growth_px < 2.5, change
    assert change.outline_shift_px == pytest.approx(change.outline_growth_px, rel=0.2), change
    assert 0.05 < change.outline_growth_rel < 0.25, change
