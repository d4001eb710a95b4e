"""Programmatic dependent launch on the GPU: the whole model in a CUDA graph (where it pays) and
in plain launches gives the same bits with it on as off, replay after replay (a kernel that
touched memory before waiting would race with the kernel before it), and passes the 2x rule."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import two_x_rule

from inception_fast import optimize
from inception_fast.backends import backend_status
from inception_fast.kernels import programmatic_launch
from inception_fast.kernels.triton import stage_launch

pytestmark = pytest.mark.cuda

BACKENDS = ["triton", "triton-gemm", "auto"]


@pytest.fixture
def counted_launches(monkeypatch):
    """How many stage-kernel launches asked for programmatic dependent launch and got it."""
    asked = {"on": 0}
    original = programmatic_launch.enabled

    def enabled(device):
        on = original(device)
        asked["on"] += on
        return on

    monkeypatch.setattr(stage_launch.programmatic_launch, "enabled", enabled)
    return asked


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graph", "launches"])
@torch.no_grad()
def test_same_bits_with_and_without(
    calibrated_model, monkeypatch, counted_launches, backend, batch, cuda_graph,
):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0 or later")
    usable, why = backend_status(backend)
    assert usable, why  # on the Hopper machines every one of these must work
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())

    outputs = {}
    for setting in ("0", "1"):
        monkeypatch.setenv(programmatic_launch.ENV, setting)
        fused = optimize(copy.deepcopy(model), backend=backend, dtype=torch.float16, cuda_graph=cuda_graph)
        runs = [fused(x.half()).clone() for _ in range(5)]
        for later in runs[1:]:
            torch.testing.assert_close(later, runs[0], rtol=0, atol=0)
        outputs[setting] = runs[0]
    torch.testing.assert_close(outputs["1"], outputs["0"], rtol=0, atol=0)
    two_x_rule(outputs["1"], eager, ref)
    if backend != "auto":  # auto may put every block of this batch on other backends
        assert counted_launches["on"] > 0, "no stage kernel was launched with it"
