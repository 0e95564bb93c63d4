"""Shared test set-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:
    import torch
except ImportError:  # the Blender 4.2 lane runs tests/addon in a venv without torch
    torch = None


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch with one intra-op thread for the whole session.

    The test machines have 2 cores shared by concurrent work; there ATen's 2-thread kernels wait on each other
    (a ViT-B/32 forward measured 3-4x slower, a tiny reconstruction 163 s instead of 23 s). Restored after.
    """
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
