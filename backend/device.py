"""The compute device a backend process runs its jobs on (``serve``, ``worker``, local runs)."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for, but torch sees no CUDA GPU here")
    return name
