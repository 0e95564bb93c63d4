"""Shape freedom (issue 20B), on the CPU: the setting, the region it opens, and what a shape prompt does with it.

``shape_freedom`` is a distance in head radii (model units); the region a stylization marches is F_rec's occupied
cells and every cell within that distance (:meth:`OccupancyGrid.within_distance`), inside the subject bounds when
there are any. At 0 everything is as before the setting existed: the same cells, rates and λ_reg, so the same
result bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from test_stylize_deferred import tiny_reconstruction

from backend.nerf.checkpoint import NeRFCheckpoint
from backend.nerf.config import ReconstructConfig
from backend.nerf.contraction import SceneDomain
from backend.nerf.occupancy import OccupancyGrid, cell_size_model, cells_within_distance
from backend.nerf.rays import rays_for_image
from backend.nerf.subject import SubjectBounds
from backend.nerf.synthetic import render_spheres, ring_cameras
from backend.nerf.train import train_on_images
from backend.stylize import loop
from backend.stylize.evaluation import haze_change, render_views, silhouette_change
from backend.stylize.loop import (
    LAMBDA_REG_SHAPE,
    LR_SHAPE_AT_0,
    LR_SHAPE_AT_MAX,
    OPACITY_SHAPE,
    SHAPE_FREEDOM_MAX,
    SHAPE_LR_ITERATIONS,
    StylizeConfig,
    preset_config,
    shape_learning_rate,
    stylize,
)
from backend.stylize.losses import LossWeights, StyleLossConfig, weights_for_strength
from backend.stylize.perceptual import LpipsLoss, load_lpips
from backend.stylize.standin_encoder import load_standin_clip, shape_reference
from backend.stylize.subject_render import subject_cells
from captures.cameras import Cameras

PROMPT = "a marble statue"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> NeRFCheckpoint:
    return tiny_reconstruction(tmp_path_factory)


@pytest.fixture(scope="module")
def lpips() -> LpipsLoss:
    return load_lpips("cpu", random_init=True)


def one_cell(r: int = 32) -> OccupancyGrid:
    grid = OccupancyGrid(r)
    grid.binary.zero_()
    grid.binary[r // 2, r // 2, r // 2] = True
    return grid


def test_shape_freedom_is_a_distance_from_0_to_the_maximum() -> None:
    for ok in (0, 0.0, 0.1, 0.25, SHAPE_FREEDOM_MAX):
        assert StylizeConfig(prompt=PROMPT, shape_freedom=ok).shape_freedom == ok
    for bad in (-0.01, SHAPE_FREEDOM_MAX + 0.01, True, "0.25", math.inf, math.nan, None, 2):
        with pytest.raises(ValueError, match="shape_freedom must be a number"):
            StylizeConfig(prompt=PROMPT, shape_freedom=bad)
    assert SHAPE_FREEDOM_MAX >= 0.5, "the maximum must leave room for a hat or horns"


def test_rates_and_regularization_follow_the_freedom() -> None:
    """At 0 the former defaults exactly; above 0 faster shape rates (for the run's length) and λ_reg on; explicit
    settings win."""
    zero = preset_config("default", PROMPT)
    assert zero.resolved_lr_grid() == zero.resolved_lr_density_mlp() == LR_SHAPE_AT_0 == 1e-4
    assert zero.resolved_weights() == weights_for_strength(0.5) and zero.resolved_weights().regularization == 0
    top = preset_config("default", PROMPT, shape_freedom=SHAPE_FREEDOM_MAX)
    assert top.resolved_iterations() == SHAPE_LR_ITERATIONS
    assert top.resolved_lr_grid() == pytest.approx(LR_SHAPE_AT_MAX)
    assert top.resolved_weights().regularization == LAMBDA_REG_SHAPE > 0
    assert top.resolved_weights().opacity == OPACITY_SHAPE > 0 == zero.resolved_weights().opacity
    rates = [shape_learning_rate(f) for f in (0.0, 0.1, 0.25, 0.5)]
    assert rates == sorted(rates) and rates[0] == LR_SHAPE_AT_0 < rates[1]
    # A shorter run takes larger steps for the same freedom (the distance Adam can travel is ~ lr x iterations).
    assert shape_learning_rate(0.5, 100) == pytest.approx(4 * shape_learning_rate(0.5, 400))
    assert shape_learning_rate(0.0, 100) == LR_SHAPE_AT_0
    assert shape_learning_rate(0.5, 2) == pytest.approx(10 * shape_learning_rate(0.5, 400)), "capped"
    # colour_only: no λ_reg (geometry is frozen); explicit weights and rates are taken as given.
    assert dataclasses.replace(top, colour_only=True).resolved_weights().regularization == 0
    assert dataclasses.replace(top, weights=LossWeights()).resolved_weights().regularization == 0
    # The density MLP acts on every point at once: it keeps the slow rate whatever the freedom, unless given.
    assert top.resolved_lr_density_mlp() == LR_SHAPE_AT_0
    assert dataclasses.replace(top, lr_grid=2e-4).resolved_lr_density_mlp() == LR_SHAPE_AT_0
    assert dataclasses.replace(top, lr_density_mlp=2e-4).resolved_lr_density_mlp() == 2e-4
    assert top.to_dict()["lr_grid"] == pytest.approx(LR_SHAPE_AT_MAX)


@pytest.mark.parametrize("domain", [SceneDomain("bounded", 1.5), SceneDomain("contract")])
def test_the_region_grows_by_the_distance_in_cells(domain: SceneDomain) -> None:
    """One occupied cell at the centre: along an axis the region reaches floor(distance / cell size) cells, as a
    ball (the diagonal corner of that cube stays out), and it only grows with the distance."""
    r = 32
    grid = one_cell(r)
    cell = 3.0 / r if domain.kind == "bounded" else 4.0 / r  # contract: the unit ball's cells are 4 / R
    assert float(cell_size_model(domain, r)[r // 2, r // 2, r // 2]) == pytest.approx(cell)
    assert torch.equal(grid.within_distance(0.0, domain), grid.binary)
    assert torch.equal(grid.within_distance(0.99 * cell, domain), grid.binary)
    previous = 1
    for k in (1, 2, 3):
        region = grid.within_distance(k * cell + 1e-4, domain)
        c = r // 2
        assert int(region[c, :, c].sum()) == 2 * k + 1, k  # exactly k cells each way along an axis
        assert bool(region[c + k, c, c]) and not bool(region[c + k + 1, c, c])
        assert not bool(region[c + k, c + k, c + k]), "a ball, not a cube"
        assert int(region.sum()) > previous
        previous = int(region.sum())
    with pytest.raises(ValueError, match="distance"):
        grid.within_distance(-0.1, domain)


def test_contracted_cells_grow_no_further_than_the_distance() -> None:
    """Outside the unit ball a contracted cell spans more than 4 / R model units: the region counts fewer cells."""
    r, domain = 32, SceneDomain("contract")
    size = cell_size_model(domain, r)
    grid = OccupancyGrid(r)
    grid.binary.zero_()
    # An occupied cell just outside the unit ball along +x (contracted radius ~1.31: model radius ~1.45).
    i = r // 2 + 10
    grid.binary[i, r // 2, r // 2] = True
    assert float(size[i, r // 2, r // 2]) > 1.5 * 4.0 / r
    region = grid.within_distance(3 * 4.0 / r + 1e-4, domain)  # three unit-ball cells' worth
    reach_out = int(region[i:, r // 2, r // 2].sum()) - 1
    reach_in = int(region[:i, r // 2, r // 2].sum())
    assert reach_out < 3 and reach_in <= 3 and reach_out < reach_in


def test_the_region_grows_only_into_the_grown_bounds_and_leaves_the_room_out(ckpt: NeRFCheckpoint) -> None:
    """With bounds, shape may grow into empty cells within the freedom of the person and inside the bounds grown by
    it (room for a hat above bounds that fit the head closely); F_rec's cells between the bounds and the grown
    bounds (the room: a wall near the head) are left out; F_rec's cells beyond the grown bounds stay."""
    m = np.diag([0.5, 0.5, 0.5, 1.0])
    m[:3, 3] = (0.3, 0.0, 0.0)
    bounds = SubjectBounds("ellipsoid", m)
    grid = ckpt.model.occupancy
    domain = ckpt.model.domain
    inside = subject_cells(bounds, grid.resolution, domain)
    person = grid.binary & inside
    for freedom in (0.0, 0.25, SHAPE_FREEDOM_MAX):
        region = loop._allowed_cells(ckpt.model, freedom, bounds)
        room = subject_cells(bounds.grown(freedom), grid.resolution, domain)
        new = region & ~grid.binary
        assert not bool((new & ~room).any()), f"{freedom}: growth outside the grown bounds"
        assert not bool((new & ~cells_within_distance(person, freedom, domain)).any()), f"{freedom}: too far"
        assert bool((grid.binary & ~room).eq(region & grid.binary & ~room).all()), "F_rec's cells beyond stay"
        assert bool((person & ~region).sum() == 0), "the person's cells stay"
        left_out = grid.binary & room & ~inside & ~region
        assert bool(left_out.eq(grid.binary & room & ~inside if freedom > 0 else torch.zeros_like(left_out)).all())
    grown = loop._allowed_cells(ckpt.model, SHAPE_FREEDOM_MAX, bounds) & ~grid.binary
    assert bool((grown & ~inside).any()), "the test needs growth beyond the bounds"
    assert bool((grid.binary & subject_cells(bounds.grown(SHAPE_FREEDOM_MAX), grid.resolution, domain)
                 & ~inside).any()), "the test needs room cells between the bounds and the grown bounds"


def test_shape_never_grows_into_the_haze_the_subject_left_out(ckpt: NeRFCheckpoint, lpips: LpipsLoss) -> None:
    """The cells a reconstruction's subject leaves out (``subject_air``: haze around a head) keep F_rec's density;
    growth must not re-admit them, or a stylization with shape freedom brings the haze back as a shell of fog on its
    first iteration. Here half of the person's own cells play that haze: without ``left_out`` the growth region
    takes them back (the test's bite), with it none is marched, and the finished stylization holds none."""
    from backend.jobs.subject import as_subject
    from backend.stylize.standin_encoder import load_standin_clip

    m = np.diag([0.5, 0.5, 0.5, 1.0])
    m[:3, 3] = (0.3, 0.0, 0.0)
    bounds = SubjectBounds("ellipsoid", m)
    grid = ckpt.model.occupancy
    inside = subject_cells(bounds, grid.resolution, ckpt.model.domain)
    r = grid.resolution
    upper = torch.zeros_like(grid.binary)
    upper[:, :, r // 2:] = True
    air = grid.binary & inside & upper
    assert int(air.sum()) > 20, "the test needs occupied cells to leave out"
    rec = dataclasses.replace(ckpt, model=copy.deepcopy(ckpt.model), subject=bounds, subject_air=air)
    assert as_subject(rec) == int(air.sum())
    readmitted = loop._allowed_cells(rec.model, SHAPE_FREEDOM_MAX, bounds) & air
    assert int(readmitted.sum()) > 0, "without left_out the growth would take the haze back"
    assert not bool((loop._allowed_cells(rec.model, SHAPE_FREEDOM_MAX, bounds, air) & air).any())

    config = preset_config("tiny", "a big hat", iterations=3, shape_freedom=SHAPE_FREEDOM_MAX)
    sty = stylize(rec, config, "cpu", clip=load_standin_clip(), perceptual=lpips)
    assert not bool((sty.model.occupancy.binary & air).any())
    assert sty.subject_air is None


def test_shape_stays_out_of_the_air_the_subject_left_out(ckpt: NeRFCheckpoint) -> None:
    """The cells a subject leaves out that F_rec left empty (the air its cameras saw through beside a head) stay
    closed to growth as its haze does: opened, they let "a big hat" fill the grown bounds with cloud on a real head
    (bench/results/sweep_shape_h100_2026-12-08_seen-air-open.md). Here the upper half's empty cells within reach
    play that air: growth reaches them when nothing is left out (the test's bite), and none when they are."""
    m = np.diag([0.5, 0.5, 0.5, 1.0])
    m[:3, 3] = (0.3, 0.0, 0.0)
    bounds = SubjectBounds("ellipsoid", m)
    grid = ckpt.model.occupancy
    upper = torch.zeros_like(grid.binary)
    upper[:, :, grid.resolution // 2:] = True
    air = loop._allowed_cells(ckpt.model, SHAPE_FREEDOM_MAX, bounds) & ~grid.binary & upper
    assert int(air.sum()) > 20, "the test needs empty cells within reach to leave out"
    assert not bool((loop._allowed_cells(ckpt.model, SHAPE_FREEDOM_MAX, bounds, air) & air).any())


def test_freedom_0_is_the_former_stylization_bit_for_bit(ckpt: NeRFCheckpoint, lpips: LpipsLoss) -> None:
    """The default (0) trains exactly as the former explicit defaults did (rates 1e-4, λ_reg 0, F_rec's cells)."""
    from backend.stylize.standin_encoder import load_standin_clip

    clip = load_standin_clip()
    new = stylize(ckpt, preset_config("tiny", "a red face", iterations=3), "cpu", clip=clip, perceptual=lpips)
    former = preset_config("tiny", "a red face", iterations=3, lr_grid=1e-4, lr_density_mlp=1e-4,
                           weights=weights_for_strength(0.5))
    old = stylize(ckpt, former, "cpu", clip=clip, perceptual=lpips)
    for (name, a), (_, b) in zip(new.model.state_dict().items(), old.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(new.model.occupancy.binary, ckpt.model.occupancy.binary)


def disc(size: int, radius: float, centre: tuple[float, float]) -> np.ndarray:
    """A ``(size, size)`` bool silhouette: pixels whose centre lies within ``radius`` of ``centre`` (x, y)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def test_views_widen_until_what_may_grow_is_in_the_frame() -> None:
    """A head filling 95 % of the frame leaves no room for a hat: the view widens until the silhouette grown by the
    freedom (in pixels: distance x focal / depth) fits, no further than the cap, and not for sides where the
    subject is already cut off by the frame."""
    from backend.stylize.views import growth_zoom, zoomed_out

    size, focal, depth = 100, 200.0, 4.0
    cam = Cameras(np.eye(4)[None], np.array([focal]), np.array([focal]), np.array([50.0]), np.array([50.0]),
                  np.array([size]), np.array([size]))
    head = disc(size, 47.5, (50.0, 50.0))  # 95 % of the frame
    grow = 0.5 * focal / depth  # 25 px
    zoom = growth_zoom(cam, [head], np.array([depth]), 0.5, max_zoom=2.0)
    assert zoom[0] == pytest.approx((47.0 + grow) / 50.0, abs=1e-9)  # the outermost pixel edge, grown
    assert zoomed_out(cam, zoom).fx[0] == pytest.approx(focal / zoom[0])
    # Half-size silhouettes of the same view give the same answer.
    half = growth_zoom(cam, [disc(size // 2, 23.75, (25.0, 25.0))], np.array([depth]), 0.5, max_zoom=2.0)
    assert half[0] == pytest.approx(zoom[0], abs=0.03)
    assert growth_zoom(cam, [head], np.array([depth]), 0.5, max_zoom=1.2)[0] == pytest.approx(1.2)
    assert growth_zoom(cam, [head], np.array([depth]), 0.0, max_zoom=2.0)[0] == 1.0, "no growth, no change"
    small = disc(size, 10.0, (50.0, 50.0))
    assert growth_zoom(cam, [small], np.array([depth]), 0.5, max_zoom=2.0)[0] == 1.0, "room already"
    # Shoulders cut off at the bottom (and sides) ask for nothing; the top still asks for the hat's room.
    body = head | (np.mgrid[0:size, 0:size][0] >= 70)
    top_only = growth_zoom(cam, [body], np.array([depth]), 0.5, max_zoom=2.0)[0]
    assert top_only == pytest.approx((47.0 + grow) / 50.0, abs=1e-9)
    full = np.ones((size, size), dtype=bool)
    assert growth_zoom(cam, [full], np.array([depth]), 0.5, max_zoom=2.0)[0] == 1.0, "a room fills every view"
    assert growth_zoom(cam, [head], np.array([-1.0]), 0.5, max_zoom=2.0)[0] == 1.0, "behind the camera"
    with pytest.raises(ValueError, match="factors"):
        zoomed_out(cam, 0.5)
    with pytest.raises(ValueError, match="one silhouette"):
        growth_zoom(cam, [], np.array([depth]), 0.5, max_zoom=2.0)


# -- what a shape prompt does with the freedom (the stand-in, a test instrument) -------------------------------------

SHAPE_SIZE = 32


@pytest.fixture(scope="module")
def spheres() -> NeRFCheckpoint:
    """The three spheres reconstructed well enough (300 steps) that their air is air, with unit-sphere bounds."""
    cams = ring_cameras(8, SHAPE_SIZE)
    rec = train_on_images(cams, render_spheres(cams), ReconstructConfig.tiny(steps=300, seed=3), torch.device("cpu"),
                          background="matte")
    return dataclasses.replace(rec, subject=SubjectBounds("ellipsoid", np.eye(4)))


def hat(rec: NeRFCheckpoint, freedom: float, opacity: float | None = None, iterations: int = 60) -> NeRFCheckpoint:
    """ "a big hat" with the stand-in centred on F_rec's own renders (so only the outline can move its shape axes);
    the loop's default weights for the freedom, or those with λ_opa = ``opacity``."""
    assert rec.cameras is not None
    source = render_views(rec, rec.cameras).rgb.permute(0, 3, 1, 2)
    clip = load_standin_clip(shape_reference=shape_reference(source))
    base = preset_config("tiny", "a big hat", shape_freedom=freedom).resolved_weights()
    weights = None if opacity is None else dataclasses.replace(base, opacity=opacity)
    config = preset_config("tiny", "a big hat", iterations=iterations, max_side=SHAPE_SIZE, n_templates=4,
                           loss=StyleLossConfig(n_crops=4, n_negatives=4), preview_every=10**6, checkpoint_every=0,
                           shape_freedom=freedom, weights=weights, seed=0)
    return stylize(rec, config, "cpu", clip=clip, perceptual=load_lpips("cpu", random_init=True))


def wide_views() -> Cameras:
    """Eight views around the spheres, wide enough (half-angle 40°) that the frame's edges see past the bounds grown
    by the maximum freedom (half-angle 30° at this distance)."""
    return ring_cameras(8, SHAPE_SIZE, focal=0.6 * SHAPE_SIZE, elevation_deg=10.0)


def opacity_beyond(bounds: SubjectBounds, cameras: Cameras, alpha: torch.Tensor) -> torch.Tensor:  # -> [n] alphas
    """The opacities of the pixels whose rays miss ``bounds`` (``alpha``: [views, H, W])."""
    beyond = []
    for i in range(len(cameras)):
        o, d = rays_for_image(cameras, i)
        t_in, t_out = bounds.ray_interval(o, d)
        beyond.append(alpha[i].reshape(-1)[t_out <= t_in])
    return torch.cat(beyond)


@pytest.mark.slow
def test_a_shape_prompt_grows_the_silhouette_only_inside_the_grown_bounds(spheres: NeRFCheckpoint) -> None:
    """Issue 20B: asked for "a big hat", the maximum freedom moves the silhouette by a measured amount while at
    freedom 0 the same prompt cannot; nothing forms on rays that miss the bounds grown by the freedom; and the
    opacity prior the loop adds with the freedom keeps what grows solid: without it, more haze forms in front of
    the surface (``haze_change``, which needs no matte).

    60 iterations (the shape rate scaled up by 400 / 60, as the loop does for short runs), so the figures are
    this test's, not the 400-iteration schedule's (``bench/results/shape_cpu_study.md``: there the prior left the
    growth as it was, here it brakes it from x1.8 to x1.09)."""
    views = wide_views()
    before = render_views(spheres, views)
    fixed = silhouette_change(before.alpha, render_views(hat(spheres, 0.0), views).alpha)
    assert fixed.area_ratio == pytest.approx(1.0, abs=0.03), fixed

    free = hat(spheres, SHAPE_FREEDOM_MAX)
    after = render_views(free, views)
    grown = silhouette_change(before.alpha, after.alpha)
    assert grown.area_ratio > 1.05 and grown.outline_growth_rel > 0.01, grown  # measured x1.09, 0.02
    beyond = opacity_beyond(spheres.subject.grown(SHAPE_FREEDOM_MAX), views, after.alpha)
    assert beyond.numel() > 1000, "the views must see past the grown bounds"
    assert float(beyond.mean()) < 0.01 and float(beyond.max()) < 0.05

    hazy = hat(spheres, SHAPE_FREEDOM_MAX, opacity=0.0)
    haze, hazy_haze = haze_change(spheres, free, views), haze_change(spheres, hazy, views)
    assert haze.haze < 0.6 * hazy_haze.haze, (haze, hazy_haze)  # measured 4.2 % against 18.9 %
