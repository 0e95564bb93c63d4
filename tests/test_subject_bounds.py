"""Subject bounds: exact ray intervals, world <-> model form, marching restricted to them, and detection of the
person from the surface the cameras see (analytic density fields: a head and torso in front of a wall, a hollow
head, a smeared head in haze)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.nerf.contraction import SceneDomain
from backend.nerf.marching import MarchSettings, march_rays
from backend.nerf.occupancy import OccupancyGrid
from backend.nerf.subject import (
    SubjectBounds,
    SubjectBoundsError,
    capture_frame,
    default_subject_bounds,
    detect_subject_bounds,
    min_volume_ellipsoid,
)
from captures.cameras import Cameras
from captures.normalize import Normalization


def random_affine(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m = np.eye(4)
    m[:3, :3] = q @ np.diag(rng.uniform(0.2, 1.0, size=3))
    m[:3, 3] = rng.uniform(-0.3, 0.3, size=3)
    return m


def ring_cameras(n: int = 12, distance: float = 2.5, up: tuple[float, float, float] = (0.0, 0.0, 1.0),
                 focal: float = 100.0) -> Cameras:
    """Cameras on a ring around the origin, looking at it, OpenCV axes, with ``up`` as the world's up; 64x64
    pixels (``focal`` 40 frames head and torso, 2 units across at the origin; 100 frames the head)."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = a - up * (a @ up)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    c2w = []
    # A frontal arc (as a selfie capture): the cameras sit on the -e2 side.
    for ang in np.linspace(-0.8, 0.8, n):
        pos = distance * (np.sin(ang) * e1 - np.cos(ang) * e2)
        z = -pos / np.linalg.norm(pos)
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        m = np.eye(4)
        m[:3, :3] = np.stack([x, y, z], axis=1)
        m[:3, 3] = pos
        c2w.append(m)
    k = np.ones(n)
    return Cameras(np.stack(c2w), focal * k, focal * k, 32 * k, 32 * k, np.full(n, 64), np.full(n, 64))


@pytest.mark.parametrize("shape", ["box", "ellipsoid"])
def test_ray_interval_is_exactly_where_points_are_inside(shape: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        bounds = SubjectBounds(shape, random_affine(rng))
        rays_o = torch.as_tensor(rng.normal(size=(400, 3)) * 2.0, dtype=torch.float64)
        d = rng.normal(size=(400, 3))
        rays_d = torch.as_tensor(d / np.linalg.norm(d, axis=1, keepdims=True), dtype=torch.float64)
        t_min, t_max = bounds.ray_interval(rays_o, rays_d)
        t = torch.linspace(-6.0, 6.0, 2001, dtype=torch.float64)
        pts = rays_o[:, None, :] + rays_d[:, None, :] * t[None, :, None]
        inside = bounds.contains(pts)
        predicted = (t[None, :] >= t_min[:, None]) & (t[None, :] <= t_max[:, None])
        # Points within one sampling step of the boundary may fall either way.
        near_edge = ((t[None, :] - t_min[:, None]).abs() < 0.01) | ((t[None, :] - t_max[:, None]).abs() < 0.01)
        assert torch.equal(inside & ~near_edge, predicted & ~near_edge)
        assert inside.any(), "the rays should hit the bounds at least sometimes"
        assert (~inside.any(dim=1)).any(), "and miss them sometimes"


def test_world_form_round_trips_and_scales_with_the_normalization() -> None:
    rng = np.random.default_rng(5)
    norm = Normalization(np.array([0.9, -1.4, 21.7]), 8.7)
    bounds = SubjectBounds("ellipsoid", random_affine(rng))
    world = bounds.to_world(norm)
    assert world["shape"] == "ellipsoid"
    again = SubjectBounds.from_world(world, norm)
    np.testing.assert_allclose(again.matrix, bounds.matrix, atol=1e-12)
    # The centre in the world is where the normalization puts the model centre.
    np.testing.assert_allclose(np.asarray(world["matrix"])[:3, 3], norm.to_world(bounds.center), atol=1e-9)


@pytest.mark.parametrize("matrix, why", [
    (np.diag([1.0, 0.0, 1.0, 1.0]), "zero size"),
    (np.ones((4, 4)), "affine"),
    (np.eye(3), "4x4"),
])
def test_unusable_bounds_are_refused_with_a_reason(matrix: np.ndarray, why: str) -> None:
    with pytest.raises(SubjectBoundsError, match=why):
        SubjectBounds.from_world({"shape": "box", "matrix": matrix.tolist()}, Normalization(np.zeros(3), 1.0))
    with pytest.raises(SubjectBoundsError, match="shape"):
        SubjectBounds("sphere", np.eye(4))


def test_marching_with_bounds_samples_only_inside_them() -> None:
    domain = SceneDomain("bounded", 1.5)
    occ = OccupancyGrid(16)
    occ.binary.fill_(True)
    settings = MarchSettings(dt_min=0.02, max_steps=400)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.5, 0.3, 0.4])
    m[:3, 3] = (0.1, 0.0, -0.2)
    bounds = SubjectBounds("ellipsoid", m)
    g = torch.Generator().manual_seed(0)
    rays_o = torch.randn(256, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -3.0])
    rays_d = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.1 * torch.randn(256, 3, generator=g),
                                           dim=-1)
    whole = march_rays(rays_o, rays_d, occ, domain, settings, impl="torch")
    subject = march_rays(rays_o, rays_d, occ, domain, settings, impl="torch", subject=bounds)
    mids = lambda s: rays_o[s.ray_indices] + rays_d[s.ray_indices] * (0.5 * (s.t_starts + s.t_ends))[:, None]  # noqa: E731
    assert subject.ray_indices.numel() > 0
    assert bool(bounds.contains(mids(subject)).all())
    assert not bool(bounds.contains(mids(whole)).all())
    # Every sample of the whole march that lies inside the bounds (away from their edge) is kept.
    inside_whole = int(bounds.contains(mids(whole)).sum())
    assert subject.ray_indices.numel() >= 0.95 * inside_whole


def test_capture_frame_is_upright_and_faces_the_cameras() -> None:
    up = np.array([0.2, -0.3, 1.0])
    cams = ring_cameras(up=(0.2, -0.3, 1.0))
    frame = capture_frame(cams)
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-9)
    assert np.linalg.det(frame) > 0
    np.testing.assert_allclose(frame[:, 1], up / np.linalg.norm(up), atol=1e-6)
    toward = cams.c2w[:, :3, 3].mean(axis=0)
    assert frame[:, 2] @ toward / np.linalg.norm(toward) > 0.95
    default = default_subject_bounds(cams)
    assert bool(default.contains(torch.zeros(1, 3, dtype=torch.float64)).all())


def person_and_wall(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """A head (sphere r 0.45 at the origin), neck and torso (a slab below it, cut off at z = -1.3), and a wall
    (the plane y = 1.2, behind the head as the ring cameras look along +y), all solid."""
    head = (x * x).sum(-1) < 0.45**2
    torso = (x[:, 2] < -0.4) & (x[:, 2] > -1.3) & (x[:, 0].abs() < 0.8) & (x[:, 1].abs() < 0.3)
    wall = (x[:, 1] > 1.2) & (x[:, 1] < 1.35)
    return (head | torso | wall).float() * 500.0


def volume(b: SubjectBounds) -> float:
    return abs(float(np.linalg.det(b.matrix[:3, :3]))) * (8.0 if b.shape == "box" else 4.0 / 3.0 * math.pi)


def assert_tight(fn, cams, ellipsoid: SubjectBounds, head_top: float) -> None:
    """The ellipsoid (the default) holds no more than a box around the same seen surface would, give or take
    the corners a round shape needs to reach a torso's; nothing in front of the face, nothing far above it."""
    box = detect_subject_bounds(fn, cams, "cpu", resolution=64, shape="box").bounds
    assert box.shape == "box" and ellipsoid.shape == "ellipsoid"
    assert volume(ellipsoid) < 1.25 * volume(box)
    assert not bool(ellipsoid.contains(torch.tensor([[0.0, -0.9, 0.0], [0.0, 0.0, head_top + 0.55]])).any())


@pytest.mark.parametrize("shape", ["ellipsoid", "box"])
def test_detection_keeps_the_person_and_leaves_the_wall_out(shape: str) -> None:
    cams = ring_cameras(focal=40.0)
    det = detect_subject_bounds(person_and_wall, cams, "cpu", resolution=64, shape=shape)
    assert det.found and det.surface_voxels > 0
    b = det.bounds
    assert b.shape == shape
    # What the frontal ring sees of the person (the torso's back and the head's back it does not see).
    person_points = torch.tensor([[0.0, 0.0, 0.44], [0.44, 0.0, 0.0], [0.0, -0.44, 0.0], [0.75, 0.0, -1.25],
                                  [-0.75, 0.1, -0.5], [-0.75, -0.25, -1.25]])
    assert bool(b.contains(person_points).all())
    wall_points = torch.tensor([[0.0, 1.25, 0.0], [0.5, 1.3, -0.5], [0.0, 1.21, 0.3]])
    assert not bool(b.contains(wall_points).any())
    if shape == "ellipsoid":
        # Its semi-axes read as (side, up, front) of the capture frame, without mirroring.
        frame = capture_frame(cams)
        local = frame.T @ b.matrix[:3, :3]
        assert np.linalg.det(local) > 0
        assert np.all(np.abs(np.diag(local)) >= np.abs(local).max(axis=0) - 1e-12) and np.all(np.diag(local) > 0)
    if shape == "box":
        # Tight: the box does not reach far past the person (margin only).
        lo, hi = b.aabb()
        assert hi[2] < 0.45 + 0.25 and lo[2] > -1.3 - 0.25 and hi[1] < 1.2
    else:
        assert_tight(person_and_wall, cams, b, head_top=0.45)


def test_min_volume_ellipsoid_recovers_an_ellipsoid_from_points_on_it() -> None:
    rng = np.random.default_rng(3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = rot @ np.diag([0.3, 0.7, 1.2])
    centre = np.array([0.2, -0.4, 0.1])
    u = rng.normal(size=(400, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    inner = rng.uniform(-0.5, 0.5, size=(200, 3))  # points inside change nothing
    pts = np.concatenate([u, inner]) @ axes.T + centre
    c, a = min_volume_ellipsoid(pts, tol=1e-7)
    np.testing.assert_allclose(c, centre, atol=2e-3)
    # The same ellipsoid whatever the order and sign of its semi-axes: compare the quadratic forms.
    np.testing.assert_allclose(a @ a.T, axes @ axes.T, atol=5e-3)
    assert np.linalg.det(a) > 0  # no mirroring (a Blender empty shows it as is)
    local = np.linalg.solve(a, (pts - c).T).T
    assert float(np.linalg.norm(local, axis=1).max()) <= 1.0 + 1e-9
    # A cube's corners: the sphere through them.
    cube = np.array(list(np.ndindex(2, 2, 2)), dtype=np.float64) * 2.0 - 1.0
    c, a = min_volume_ellipsoid(cube, tol=1e-9)
    np.testing.assert_allclose(c, 0.0, atol=1e-6)
    np.testing.assert_allclose(a @ a.T, 3.0 * np.eye(3), atol=1e-4)


def test_detection_without_density_falls_back_to_the_cameras_default_and_says_why() -> None:
    cams = ring_cameras()
    det = detect_subject_bounds(lambda x: torch.zeros(x.shape[0]), cams, "cpu", resolution=16)
    assert not det.found and "nothing opaque" in det.reason
    np.testing.assert_allclose(det.bounds.matrix, default_subject_bounds(cams).matrix)
    far = lambda x: ((x - torch.tensor([1.4, 1.4, 1.4])).norm(dim=-1) < 0.2).float() * 500.0  # noqa: E731
    # Seen by the wide cameras, far from where they look.
    det = detect_subject_bounds(far, ring_cameras(focal=40.0), "cpu", resolution=32)
    assert not det.found and "head radii" in det.reason
    # At the edge of the narrow cameras' views: a few rays, no voxel that several views see.
    det = detect_subject_bounds(far, cams, "cpu", resolution=32)
    assert not det.found and "no surface seen" in det.reason


def test_checkpoints_keep_their_subject_bounds(tmp_path) -> None:
    from backend.nerf.checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint
    from backend.nerf.config import ReconstructConfig
    from backend.nerf.model import ModelConfig, NeRFModel

    config = ReconstructConfig.tiny(steps=1)
    model = NeRFModel(ModelConfig(), device="cpu")
    bounds = SubjectBounds("ellipsoid", random_affine(np.random.default_rng(1)))
    save_checkpoint(NeRFCheckpoint(model, config, "contract", subject=bounds), tmp_path / "a.pt")
    save_checkpoint(NeRFCheckpoint(model, config, "contract"), tmp_path / "b.pt")
    again = load_checkpoint(tmp_path / "a.pt", "cpu").subject
    assert again is not None and again.shape == "ellipsoid"
    np.testing.assert_array_equal(again.matrix, bounds.matrix)
    assert load_checkpoint(tmp_path / "b.pt", "cpu").subject is None


def hollow_head_with_speck_and_wall(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """What a reconstruction without mattes gives: the head a shell (radius 0.55-0.65, its inside never
    supervised, so empty), a speck of floating density inside it next to the look-at point, shoulders below,
    and a wall behind."""
    r = x.norm(dim=-1)
    shell = (r > 0.55) & (r < 0.65)
    speck = (x - torch.tensor([0.08, -0.05, 0.05])).norm(dim=-1) < 0.04
    shoulders = (x[:, 2] < -0.6) & (x[:, 2] > -1.3) & (x[:, 0].abs() < 0.9) & (x[:, 1].abs() < 0.3)
    wall = (x[:, 1] > 1.3) & (x[:, 1] < 1.45)
    return (shell | speck | shoulders | wall).float() * 500.0


def test_detection_takes_the_head_not_a_speck_nearer_the_look_at_point() -> None:
    cams = ring_cameras(focal=40.0)
    det = detect_subject_bounds(hollow_head_with_speck_and_wall, cams, "cpu", resolution=64)
    assert det.found, det.reason
    b = det.bounds
    head_points = torch.tensor([[0.0, 0.0, 0.6], [0.6, 0.0, 0.0], [0.0, -0.6, 0.0], [-0.6, 0.0, 0.0],
                                [0.85, 0.0, -1.25]])
    assert bool(b.contains(head_points).all())
    assert not bool(b.contains(torch.tensor([[0.0, 1.4, 0.0], [0.5, 1.42, -0.5]])).any())


def test_detection_of_specks_alone_falls_back_and_says_why() -> None:
    cams = ring_cameras()
    speck = lambda x: ((x - torch.tensor([0.1, 0.0, 0.0])).norm(dim=-1) < 0.07).float() * 500.0  # noqa: E731
    det = detect_subject_bounds(speck, cams, "cpu", resolution=64)
    assert not det.found and "specks" in det.reason
    np.testing.assert_allclose(det.bounds.matrix, default_subject_bounds(cams).matrix)


def smeared_head_in_haze(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """What a briefly trained reconstruction without mattes gives: a head and torso whose density is weak and
    smeared (at most 30, under a surface rule's ln 2 / 0.01 = 69, falling off over a tenth of a head radius), a
    thin haze everywhere (0.05: a ray through the whole search cube stays under 15 % opaque) and a wall."""
    head = torch.sigmoid((0.5 - x.norm(dim=-1)) / 0.05)
    slab = torch.stack([x[:, 2] + 0.45, -1.1 - x[:, 2], x[:, 0].abs() - 0.8, x[:, 1].abs() - 0.3], -1).amax(-1)
    torso = torch.sigmoid(-slab / 0.05)
    wall = ((x[:, 1] > 1.2) & (x[:, 1] < 1.35)).float()
    return 30.0 * torch.maximum(head, torso) + 0.05 + 30.0 * wall


def test_detection_finds_a_smeared_weak_person_in_haze_from_what_the_cameras_see() -> None:
    cams = ring_cameras(focal=40.0)
    det = detect_subject_bounds(smeared_head_in_haze, cams, "cpu", resolution=64)
    assert det.found, det.reason
    b = det.bounds
    seen = torch.tensor([[0.0, 0.0, 0.45], [0.45, 0.0, 0.0], [-0.45, 0.0, 0.0], [0.0, -0.45, 0.0],
                         [0.75, -0.25, -1.05], [-0.75, 0.0, -0.6]])
    assert bool(b.contains(seen).all())
    assert not bool(b.contains(torch.tensor([[0.0, 1.25, 0.0], [0.5, 1.3, -0.5]])).any())
    # Tight around the person (its smeared edge and the margin), not the search cube: the haze ends no ray.
    assert_tight(smeared_head_in_haze, cams, b, head_top=0.5)
    lo, hi = detect_subject_bounds(smeared_head_in_haze, cams, "cpu", resolution=64, shape="box").bounds.aabb()
    assert hi[2] < 0.5 + 0.3 and lo[2] > -1.1 - 0.4 and hi[1] < 0.5 and (hi - lo).max() < 2.3


@pytest.mark.parametrize("shape", ["box", "ellipsoid"])
def test_grown_bounds_lengthen_each_half_axis_by_the_distance(shape: str) -> None:
    rotation = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag([0.4, 0.9, 0.6])
    m[:3, 3] = (0.1, -0.2, 0.3)
    bounds = SubjectBounds(shape, m)
    grown = bounds.grown(0.25)
    assert grown.shape == shape and np.allclose(grown.center, bounds.center)
    for axis, half in enumerate((0.4, 0.9, 0.6)):
        direction = rotation[:, axis]
        for reach, inside in ((half + 0.24, True), (half + 0.26, False)):
            point = torch.as_tensor(bounds.center + reach * direction)[None]
            assert bool(grown.contains(point)[0]) == inside
            assert not bool(bounds.contains(point)[0])
    assert np.allclose(bounds.grown(0.0).matrix, m)
    with pytest.raises(ValueError, match="distance"):
        bounds.grown(-0.1)


def person_wall_and_haze(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """:func:`person_and_wall` with a wisp of haze beside the head (a ball of radius 0.15 at (0.7, 0, 0.25) of
    density 1.5: a ray through its middle turns a third opaque, so every view sees through it), as a
    reconstruction without mattes leaves in front of a plain wall."""
    wisp = (x - torch.tensor([0.7, 0.0, 0.25])).norm(dim=-1) < 0.15
    return person_and_wall(x) + wisp.float() * 1.5


def test_detection_finds_the_air_the_cameras_saw_through_and_keeps_the_person() -> None:
    cams = ring_cameras(focal=40.0)
    det = detect_subject_bounds(person_wall_and_haze, cams, "cpu", resolution=64)
    assert det.found and det.air is not None
    air = det.air.contains
    # The wisp and the empty space in front of the face: seen through by the views.
    assert bool(air(torch.tensor([[0.7, 0.0, 0.25], [0.66, -0.05, 0.3], [0.0, -0.9, 0.0], [0.0, -0.7, 0.3]])).all())
    # Never the person: its surface, the skin of air just outside it (the guard), its inside (no view sees there),
    # nor what lies outside the search cube.
    person = torch.tensor([[0.0, 0.0, 0.43], [0.46, 0.0, 0.0], [0.0, -0.47, 0.0], [-0.33, -0.33, 0.0],
                           [0.0, 0.0, 0.0], [0.2, 0.1, -0.1], [0.0, -0.31, -0.8], [0.6, -0.32, -1.0],
                           [0.0, 0.0, 5.0]])
    assert not bool(air(person).any())
    # A wisp no ray ends in changes nothing of the bounds: where rays end decides them.
    without = detect_subject_bounds(person_and_wall, cams, "cpu", resolution=64)
    np.testing.assert_allclose(det.bounds.matrix, without.bounds.matrix, atol=1e-9)


def test_seen_air_marks_the_occupancy_cells_whose_centre_it_holds() -> None:
    cams = ring_cameras(focal=40.0)
    det = detect_subject_bounds(person_wall_and_haze, cams, "cpu", resolution=64)
    assert det.air is not None
    domain = SceneDomain("contract")
    r = 48
    cells = det.air.cells(r, domain)
    assert cells.shape == (r, r, r) and cells.dtype == torch.bool
    ticks = (torch.arange(r, dtype=torch.float64) + 0.5) / r
    centres = domain.from_unit_cube(torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3))
    np.testing.assert_array_equal(cells.reshape(-1).numpy(), det.air.contains(centres).numpy())

    def cell_of(p: list[float]) -> tuple[int, ...]:
        u = domain.to_unit_cube(torch.tensor([p], dtype=torch.float64))[0]
        return tuple(int(v) for v in (u * r).long().clamp(0, r - 1))

    assert cells[cell_of([0.7, 0.0, 0.25])] and not cells[cell_of([0.0, 0.0, 0.0])]
    assert not cells[cell_of([0.0, -0.45, 0.0])]


def person_wall_and_dense_haze(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """:func:`person_and_wall` with a dense clump of haze beside the head (a ball of radius 0.12 at (0.66, 0, 0.3),
    density 60: rays stop in it, so no view sees through it), as a reconstruction without mattes leaves beside a
    head in front of a plain wall, and a small one above the head."""
    clump = (x - torch.tensor([0.66, 0.0, 0.3])).norm(dim=-1) < 0.12
    above = (x - torch.tensor([-0.2, 0.1, 0.75])).norm(dim=-1) < 0.09
    return person_and_wall(x) + (clump | above).float() * 60.0


SKIN, SWEATER, GREY = (0.8, 0.55, 0.45), (0.75, 0.7, 0.6), (0.5, 0.5, 0.5)


def person_colour(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, 3]
    """Skin on the head, a beige sweater below the chin, grey elsewhere (the wall, and the haze that stands in for
    it)."""
    head = (x * x).sum(-1) < 0.55**2
    torso = (x[:, 2] < -0.4) & (x[:, 0].abs() < 0.9) & (x[:, 1].abs() < 0.4)
    rgb = torch.tensor(GREY).expand(x.shape[0], 3).clone()
    rgb[torso] = torch.tensor(SWEATER)
    rgb[head] = torch.tensor(SKIN)
    return rgb


def analytic_plates(density_fn, colour_fn, bounds: SubjectBounds, step: float = 0.01, far: float = 6.0):
    """A :data:`~backend.nerf.subject_key.PlateFn` of analytic fields, volume-rendered in ``step``s: each view's
    render and its plate (the density inside ``bounds`` zeroed)."""
    from backend.nerf.rays import rays_for_image
    from backend.nerf.subject_key import Plate

    def march(o: torch.Tensor, d: torch.Tensor, cut: bool) -> tuple[torch.Tensor, torch.Tensor]:
        t = (torch.arange(int(far / step), dtype=torch.float32) + 0.5) * step
        pts = o[:, None] + d[:, None] * t[None, :, None]
        flat = pts.reshape(-1, 3)
        sigma = density_fn(flat)
        if cut:
            sigma = torch.where(bounds.contains(flat), 0.0, sigma)
        alpha = 1.0 - torch.exp(-sigma.reshape(pts.shape[:2]) * step)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        w = alpha * trans
        rgb = (w[..., None] * colour_fn(flat).reshape(*pts.shape)).sum(1)
        return torch.cat([rgb, w.sum(1, keepdim=True)], -1), (w * t).sum(1)

    def plate(camera: Cameras) -> Plate:
        o, d = rays_for_image(camera, 0, device="cpu", dtype=torch.float32)
        h, w = int(camera.height[0]), int(camera.width[0])
        rgba, _ = march(o, d, False)
        plate_rgba, depth = march(o, d, True)
        t_in, t_out = bounds.ray_interval(o.double(), d.double())
        exit_t = torch.where(t_out > t_in.clamp_min(0.0), t_out, torch.full_like(t_out, -1.0))
        return Plate(rgba.reshape(h, w, 4).numpy(), plate_rgba.reshape(h, w, 4).numpy(),
                     depth.reshape(h, w).numpy(), exit_t.reshape(h, w).float().numpy())

    return plate


def keyed_air(density_fn, cams: Cameras):
    """The detection and what it leaves out with the key, as a reconstruct job decides it."""
    from backend.nerf.subject import SeenAir
    from backend.nerf.subject_key import keyed_out_voxels

    det = detect_subject_bounds(density_fn, cams, "cpu", resolution=64)
    assert det.found and det.air is not None and len(det.views) == len(cams)
    keyed = keyed_out_voxels(analytic_plates(density_fn, person_colour, det.bounds), det.views, det.air.frame,
                             det.air.half_extent, 64)
    return det, SeenAir(det.air.voxels | keyed, det.air.frame, det.air.half_extent)


def person_far_wall_and_dense_haze(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    """:func:`person_and_wall` with the wall a head diameter further back (y = 2: the plate behind the bounds is
    the wall, not matter just behind them, :data:`~backend.nerf.subject_key.BODY_GAP`) and dense clumps of haze
    beside the head, inside the bounds (density 60: rays stop in it, no view sees through)."""
    wall = (x[:, 1] > 1.2) & (x[:, 1] < 1.35)
    far_wall = (x[:, 1] > 2.0) & (x[:, 1] < 2.15)
    clump = (x - torch.tensor([0.6, -0.2, 0.25])).norm(dim=-1) < 0.12
    return person_and_wall(x) + (far_wall.float() - wall.float()) * 500.0 + clump.float() * 60.0


def test_the_key_leaves_out_dense_haze_beside_the_person_and_keeps_the_person() -> None:
    """A dense clump of haze the colour of the wall beside the head: rays stop in it, so the seen air keeps it;
    its colour is the plate's, so the key leaves it out. The head, the torso, the head's unseen back all stay."""
    cams = ring_cameras(focal=40.0)
    det, air = keyed_air(person_far_wall_and_dense_haze, cams)
    clumps = torch.tensor([[0.6, -0.2, 0.25], [0.6, -0.3, 0.25], [0.55, -0.25, 0.3], [0.65, -0.2, 0.2]])
    assert bool(det.bounds.contains(clumps.float()).all()), "the test needs the clumps inside the bounds"
    assert bool(air.contains(clumps).all())
    assert not bool(det.air.contains(clumps[:1]).any()), "the seen air alone keeps the clump (no view sees through)"
    person = torch.tensor([[0.0, 0.0, 0.43], [0.46, 0.0, 0.0], [0.0, -0.47, 0.0], [-0.33, -0.33, 0.0],
                           [0.0, 0.0, 0.0], [0.2, 0.1, -0.1], [0.0, 0.4, 0.1], [0.0, -0.31, -0.8],
                           [0.6, -0.32, -1.0], [0.7, 0.2, -0.6]])
    assert not bool(air.contains(person).any())


def test_the_key_keeps_the_smeared_edge_of_a_weak_person_in_haze() -> None:
    cams = ring_cameras(focal=40.0)
    _, air = keyed_air(smeared_head_in_haze, cams)
    # Points of the head and torso, to their smeared edge (the density is half its peak at radius 0.5).
    edge = torch.tensor([[0.0, 0.0, 0.48], [0.48, 0.0, 0.0], [-0.48, 0.0, 0.0], [0.0, -0.48, 0.0],
                         [0.34, -0.34, 0.0], [0.0, 0.0, 0.0], [0.78, -0.28, -0.8], [-0.5, 0.0, -1.05]])
    assert not bool(air.contains(edge).any())


def test_a_key_matte_is_the_opacity_where_nothing_is_behind_and_the_person_where_the_body_goes_on() -> None:
    """One view's matte: colour against the plate where the plate is opaque; the render's opacity where the plate
    is empty (a capture with mattes); the person where the plate's matter lies just behind the bounds, whatever its
    colour; single noisy pixels dropped and holes filled."""
    from backend.nerf.subject_key import BODY_GAP, Plate, key_matte

    h, w = 12, 12
    rgba = np.zeros((h, w, 4), np.float32)
    rgba[..., :3], rgba[..., 3] = GREY, 1.0
    plate_rgba = rgba.copy()
    depth = np.full((h, w), 9.0, np.float32)
    exit_t = np.full((h, w), 3.0, np.float32)
    rgba[2:7, 2:7, :3] = SKIN  # a face, its eye the wall's colour
    rgba[4, 4, :3] = GREY
    rgba[10, 10, :3] = SKIN  # one noisy pixel
    rgba[8:11, 2:5, :3] = GREY  # grey sweater on a grey wall, the body going on just behind the bounds
    depth[8:11, 2:5] = 3.0 + 0.5 * BODY_GAP
    plate = Plate(rgba, plate_rgba, depth, exit_t)
    matte = key_matte(plate)
    assert matte[2:7, 2:7].all() and matte[8:11, 2:5].all()
    assert not matte[10, 10] and int(matte.sum()) == 25 + 9
    empty = np.zeros_like(plate_rgba)
    alone = key_matte(Plate(rgba, empty, np.zeros_like(depth), exit_t))
    assert alone.all(), "with nothing behind, every opaque pixel is the person's"


