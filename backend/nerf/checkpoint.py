"""Trained reconstructions: the :class:`NeRFCheckpoint` bundle and its file format.

A checkpoint file is a ``torch.save`` dict of tensors and plain Python values only, loaded with
``weights_only=True`` (no pickled classes, so a checkpoint from elsewhere cannot run code):

``format`` ("nerfart-nerf"), ``version``, ``model_config`` (dict), ``model_state`` (field parameters and the
occupancy grid), ``config`` (:class:`ReconstructConfig` dict), ``background`` ("matte" or "contract"),
``normalization`` (``Normalization.to_dict()`` or None), ``cameras`` (world cameras as tensors and names),
``train_indices``, ``heldout_indices``, ``step``, ``metrics``, ``subject`` (the subject bounds,
``SubjectBounds.to_dict()`` in model coordinates, or None: checkpoints written before subject bounds existed
have no key), optionally ``subject_air`` (the occupancy cells that are not the person, bool) and optionally
``train_state``.

``train_state`` is present only in a checkpoint of *unfinished* training (a job's periodic checkpoint, or the
model of a stopped job): the optimizer state, the step or iteration count, the random generator's state and the
counters that a resumed job needs to continue exactly where it stopped (see
:func:`backend.nerf.train.train_on_images` and :func:`backend.stylize.loop.stylize`). A finished checkpoint has
none, which keeps it a third of the size (Adam holds two moments per parameter). Readers that do not resume
ignore it, so such a checkpoint renders and meshes like any other.

Files are written to a temporary name, flushed to disk and renamed over the old one: a crash (even ``kill -9``
or a power cut) leaves either the previous complete checkpoint or the new complete one, never half a file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captures.cameras import Cameras

from .config import ReconstructConfig
from .model import ModelConfig, NeRFModel
from .subject import SubjectBounds

CHECKPOINT_FORMAT = "nerfart-nerf"
CHECKPOINT_VERSION = 1


@dataclass
class NeRFCheckpoint:
    """A trained model with everything needed to render it from world-space cameras.

    Attributes:
        model: the :class:`NeRFModel` (model coordinates).
        config: the training configuration.
        background: ``"matte"`` (subject alone, alpha out) or ``"contract"`` (background modelled).
        normalization: the capture's world <-> model mapping (``captures.Normalization``), or None
            when the cameras were already in model coordinates.
        cameras: the views trained and held out, world coordinates, at training resolution (or None).
        train_indices, heldout_indices: indices into ``cameras``.
        step: optimizer steps done.
        metrics: final numbers (``heldout_psnr``, ``train_psnr``, ``elapsed_s``, ...).
        train_state: what resuming unfinished training needs (optimizer state, counters, RNG state), or None
            for a finished model. Its ``"kind"`` says which loop wrote it (``"reconstruct"`` or ``"stylize"``).
        subject: the subject bounds (model coordinates) the jobs on this model use, or None when not known
            (then the whole scene is the subject).
        subject_air: ``(R, R, R)`` bool occupancy cells of a reconstruction that are not the person (the
            subject detection's :class:`~backend.nerf.subject.SeenAir`): the whole scene renders them, the
            subject leaves them out (:func:`backend.jobs.subject.as_subject`). None when not known.
    """

    model: NeRFModel
    config: ReconstructConfig
    background: str
    normalization: Any | None = None
    cameras: Cameras | None = None
    train_indices: list[int] = field(default_factory=list)
    heldout_indices: list[int] = field(default_factory=list)
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    subject: SubjectBounds | None = None
    subject_air: torch.Tensor | None = None


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (nested dicts, lists, tuples) detached and moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _cameras_to_dict(cameras: Cameras) -> dict[str, Any]:
    d: dict[str, Any] = {
        name: torch.from_numpy(np.ascontiguousarray(getattr(cameras, name)))
        for name in ("c2w", "fx", "fy", "cx", "cy", "width", "height", "distortion")
    }
    d["names"] = list(cameras.names)
    return d


def _cameras_from_dict(d: dict[str, Any]) -> Cameras:
    arrays = {k: v.numpy() for k, v in d.items() if isinstance(v, torch.Tensor)}
    return Cameras(**arrays, names=list(d.get("names", [])))


def _normalization_from_dict(d: dict[str, Any]) -> Any:
    # Imported here so that this module does not need the capture readers unless a checkpoint has one.
    from captures.normalize import Normalization

    return Normalization.from_dict(d)


def save_checkpoint(ckpt: NeRFCheckpoint, path: str | Path) -> None:
    """Write ``ckpt`` to ``path`` atomically and durably: a temporary file, fsync'd, is renamed into place."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": ckpt.model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()},
        "config": ckpt.config.to_dict(),
        "background": ckpt.background,
        "normalization": None if ckpt.normalization is None else ckpt.normalization.to_dict(),
        "cameras": None if ckpt.cameras is None else _cameras_to_dict(ckpt.cameras),
        "train_indices": [int(i) for i in ckpt.train_indices],
        "heldout_indices": [int(i) for i in ckpt.heldout_indices],
        "step": int(ckpt.step),
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "subject": None if ckpt.subject is None else ckpt.subject.to_dict(),
    }
    if ckpt.subject_air is not None:
        payload["subject_air"] = ckpt.subject_air.detach().to("cpu", torch.bool)
    if ckpt.train_state is not None:
        payload["train_state"] = _to_cpu(ckpt.train_state)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            # Without fsync a power cut after the rename can leave an empty file under the final name.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load_checkpoint(path: str | Path, device: torch.device | str) -> NeRFCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` onto ``device``.

    Raises:
        ValueError: the file is not a checkpoint of this format or version.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} (this code reads {CHECKPOINT_VERSION})")
    model = NeRFModel(ModelConfig.from_dict(payload["model_config"]), device=device)
    model.load_state_dict(payload["model_state"])
    norm = payload.get("normalization")
    cams = payload.get("cameras")
    subject = payload.get("subject")
    air = payload.get("subject_air")
    if air is not None and tuple(air.shape) != tuple(model.occupancy.binary.shape):
        raise ValueError(f"{path}: subject_air has shape {tuple(air.shape)}, the occupancy grid "
                         f"{tuple(model.occupancy.binary.shape)}")
    return NeRFCheckpoint(
        model=model,
        config=ReconstructConfig.from_dict(payload["config"]),
        background=payload["background"],
        normalization=None if norm is None else _normalization_from_dict(norm),
        cameras=None if cams is None else _cameras_from_dict(cams),
        train_indices=list(payload.get("train_indices", [])),
        heldout_indices=list(payload.get("heldout_indices", [])),
        step=int(payload.get("step", 0)),
        metrics=dict(payload.get("metrics", {})),
        train_state=payload.get("train_state"),
        subject=None if subject is None else SubjectBounds.from_dict(subject),
        subject_air=None if air is None else air.to(device=model.device, dtype=torch.bool),
    )
