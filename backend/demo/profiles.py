"""How big the demo runs: one profile per hardware class, picked from ``--size`` and whether a GPU is present.

Every number here is a setting of the add-on (scene capture ring, reconstruct / stylize presets, render size,
mesh resolution), so a profile is just what a person would type into the sidebar. The CPU sizes were measured
on a 2-core machine (README: "How long it takes"); the GPU sizes are the product's real settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SIZES = ("auto", "smallest", "cpu", "gpu")
# The default style: the NeRF-Art paper's example. Kept here, with the sizes, because this module imports
# no bpy (benchmarks of the backend's share of the demo read both on machines without Blender).
DEFAULT_PROMPT = "painting, oil on canvas, Vincent van Gogh self-portrait style"


@dataclass(frozen=True)
class Profile:
    """Sizes of one demo run.

    Attributes:
        name: ``smallest``, ``cpu`` or ``gpu``.
        ring_count, ring_elevations: capture ring (cameras per ring; comma-separated elevations in degrees).
        capture_size: capture image side in pixels (embedded capture).
        photo_long_side: for a real capture (``--capture``), the long side in pixels the reconstruction scales
            its photos down to (never up).
        capture_samples: Cycles samples per capture view.
        reconstruct_preset: ``tiny``, ``fast``, ``default`` or ``quality`` (the add-on's Quality menu).
        reconstruct_steps: training steps (0: the preset's).
        holdout_every: every n-th view is held out for the PSNR in the report.
        stylize_preset: stylization size preset.
        stylize_iterations: stylization iterations (0: the preset's for the default strength).
        turntable_frames: frames of the turntable render (one orbit).
        turntable_size: long side of the turntable frames in pixels.
        mesh_resolution: marching-cubes grid cells per axis.
        gif_frames: at most this many frames go into the animated preview.
    """

    name: str
    ring_count: int
    ring_elevations: str
    capture_size: int
    capture_samples: int
    photo_long_side: int
    reconstruct_preset: str
    reconstruct_steps: int
    holdout_every: int
    stylize_preset: str
    stylize_iterations: int
    turntable_frames: int
    turntable_size: int
    mesh_resolution: int
    gif_frames: int = 48

    @property
    def views(self) -> int:
        return self.ring_count * len([e for e in self.ring_elevations.split(",") if e.strip()])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "views": self.views}


PROFILES: dict[str, Profile] = {
    # The test suite's size: every stage runs for real, at toy sizes (about a minute on 2 CPU cores).
    "smallest": Profile(
        "smallest", ring_count=8, ring_elevations="0, 35", capture_size=64, capture_samples=8,
        photo_long_side=96, reconstruct_preset="tiny", reconstruct_steps=200, holdout_every=8,
        stylize_preset="tiny", stylize_iterations=2, turntable_frames=8, turntable_size=64, mesh_resolution=48),
    # A CPU-only machine: small but recognisable, a few minutes on 2 cores.
    "cpu": Profile(
        "cpu", ring_count=8, ring_elevations="-10, 20, 50", capture_size=96, capture_samples=16,
        photo_long_side=160, reconstruct_preset="tiny", reconstruct_steps=600, holdout_every=8,
        stylize_preset="tiny", stylize_iterations=8, turntable_frames=24, turntable_size=128, mesh_resolution=96),
    # A GPU: the product's settings (72 views at 512 px, the default reconstruction and stylization schedules,
    # a 120-frame 512 px turntable, a 256^3 mesh).
    "gpu": Profile(
        "gpu", ring_count=24, ring_elevations="-10, 15, 40", capture_size=512, capture_samples=64,
        photo_long_side=960, reconstruct_preset="default", reconstruct_steps=0, holdout_every=8,
        stylize_preset="default", stylize_iterations=0, turntable_frames=120, turntable_size=512,
        mesh_resolution=256),
}


def choose(size: str, cuda: bool) -> Profile:
    """The profile for ``--size`` (``auto``: ``gpu`` with CUDA, else ``cpu``).

    Raises:
        ValueError: an unknown size name.
    """
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    if size == "auto":
        size = "gpu" if cuda else "cpu"
    return PROFILES[size]
