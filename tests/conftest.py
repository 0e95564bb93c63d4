"""Shared test set-up.

The suite's rule on time (see tests/waits.py): a test never asserts how long something took, and it waits for
events, with :data:`waits.HANG_S` as the only limit, a hang guard. Latencies and speeds are measured in
``bench/``. Tests that take long are marked ``slow`` (they still run in CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from waits import HANG_S

ADDON_TESTS = Path(__file__).resolve().parent / "addon"

try:
    import torch
except ImportError:  # the Blender 4.2 lane runs tests/addon in a venv without torch
    torch = None

try:
    from hypothesis import settings
except ImportError:  # the add-on lanes' venvs have no hypothesis (no test there uses it)
    settings = None
if settings is not None:
    # The same examples on every run, none remembered from an earlier one: a property test that passes here
    # passes again, and one that fails fails again (with its example), rather than now and then.
    settings.register_profile("deterministic", derandomize=True, database=None)
    settings.load_profile("deterministic")


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


@pytest.fixture(autouse=True)
def _requests_wait_for_their_answer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the backend's tests a request or handshake without a timeout of its own waits up to HANG_S for its
    answer (a hang guard) instead of the client's 5 s default, which a loaded 2-core CI machine can exceed.

    Not in tests/addon: the add-on's own timeouts (its preferences') are what those tests exercise.
    """
    if ADDON_TESTS in request.node.path.parents:
        return
    try:
        from protocol import Client
    except ImportError:
        return
    monkeypatch.setattr(Client.request, "__defaults__", (HANG_S,))
    monkeypatch.setattr(Client.handshake, "__defaults__", (HANG_S,))
