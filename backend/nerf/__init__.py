"""Hash-grid NeRF (instant-ngp style) in plain PyTorch: field, occupancy grid, marching, rendering, training.

Layers (each imports only those before it): ``rays`` and ``capture_images`` (the torch and Pillow side of
the shared :mod:`captures` readers), ``hashgrid``, ``contraction`` -> ``field`` -> ``occupancy``,
``packed``, ``volrend`` -> ``marching`` -> ``model`` -> ``rendering`` -> ``config``, ``checkpoint`` ->
``evaluate`` -> ``train``. Importing this package compiles nothing and loads no data.
"""

from .checkpoint import NeRFCheckpoint, load_checkpoint, save_checkpoint
from .config import ReconstructConfig
from .contraction import SceneDomain, contract_to_ball, uncontract_from_ball
from .evaluate import evaluate_psnr, psnr_from_mse, render_image
from .field import FieldConfig, HashNeRFField, spherical_harmonics_deg4, trunc_exp
from .hashgrid import HashGridEncoding, hash_encode
from .marching import MarchSettings, march_rays, ray_aabb_intersect, step_boundaries
from .model import ModelConfig, NeRFModel
from .occupancy import OccupancyGrid
from .packed import PackedSamples, packed_info_from_ray_indices
from .rendering import RenderOutput, render_rays, render_rays_chunked, render_samples
from .train import TrainProgress, train_on_images, train_reconstruction
from .volrend import (
    accumulate_along_rays,
    exclusive_sum_packed,
    render_transmittance_from_density,
    render_weight_from_density,
)

__all__ = [
    "FieldConfig",
    "HashGridEncoding",
    "HashNeRFField",
    "MarchSettings",
    "ModelConfig",
    "NeRFCheckpoint",
    "NeRFModel",
    "OccupancyGrid",
    "PackedSamples",
    "ReconstructConfig",
    "RenderOutput",
    "SceneDomain",
    "TrainProgress",
    "accumulate_along_rays",
    "contract_to_ball",
    "evaluate_psnr",
    "exclusive_sum_packed",
    "hash_encode",
    "load_checkpoint",
    "march_rays",
    "packed_info_from_ray_indices",
    "psnr_from_mse",
    "ray_aabb_intersect",
    "render_image",
    "render_rays",
    "render_rays_chunked",
    "render_samples",
    "render_transmittance_from_density",
    "render_weight_from_density",
    "save_checkpoint",
    "spherical_harmonics_deg4",
    "step_boundaries",
    "train_on_images",
    "train_reconstruction",
    "trunc_exp",
    "uncontract_from_ball",
]
