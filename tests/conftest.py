"""Shared fixtures and markers.

Markers: `cuda` tests need a GPU and are skipped with a reason where there is none; `slow` tests
are the long ones (deselect with `-m "not slow"`). Calibrated models are built once per session
because a whole-network calibration costs seconds on a small CPU; every test still draws its own
fresh random inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inception_fast.testing import calibrated_inception_v4


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped when none is available)")
    config.addinivalue_line("markers", "slow: takes long; deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="CUDA is not available")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def calibrated_model():
    """A random fp32 reference Inception-v4 with BatchNorm calibrated at 299x299 (eval mode).
    Session-scoped: copy it (`copy.deepcopy`) before changing its dtype or device."""
    return calibrated_inception_v4(seed=0)


@pytest.fixture(scope="session")
def calibrated_model64(calibrated_model):
    """The same network in float64, the reference of every whole-model comparison."""
    return copy.deepcopy(calibrated_model).double().eval()


@pytest.fixture(params=["triton", "cuda"])
def backend(request):
    """Each GPU kernel backend in turn (GPU tests only): on a GPU machine both must work, so an
    unusable one fails instead of skipping."""
    from inception_fast.backends import backend_status

    ok, reason = backend_status(request.param, "cuda")
    if not ok:
        pytest.fail(f"the {request.param} backend must work on a GPU machine: {reason}")
    return request.param


@pytest.fixture
def fresh_backend_choices(monkeypatch, tmp_path):
    """`auto` on an empty choice cache in `tmp_path` and without the shipped table: every
    block is timed here (restored after)."""
    from inception_fast import cache
    from inception_fast.backends import shipped_choices

    monkeypatch.setenv("INCEPTION_FAST_CACHE_DIR", str(tmp_path))
    for name in ("_path", "_table", "_memory_only"):  # read afresh here
        monkeypatch.setattr(cache.BACKEND_CHOICES, name, getattr(cache.BACKEND_CHOICES, name))
    cache.BACKEND_CHOICES.reset()
    monkeypatch.setattr(shipped_choices, "_table", {"card": None, "choices": {}})
    return tmp_path


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """The GPU backends fill every buffer they allocate with NaN first, so a channel slice
    that a kernel never writes shows up as NaN in the result."""
    monkeypatch.setenv("INCEPTION_FAST_POISON", "1")
