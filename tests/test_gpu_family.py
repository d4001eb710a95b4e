"""The Inception family on the kernel backends: GoogLeNet, Inception-v3 (torchvision, timm) and
Inception-ResNet-v2 (and their characteristic blocks) within 2x eager PyTorch's error of the
fp32 source model, in fp16 and bf16 on `triton` and `cuda`, and fp32 (TF32) on `triton`,
with NaN-poisoned buffers, odd batches and non-default sizes."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import two_x_rule

from inception_fast import optimize
from inception_fast.testing import calibrated_model

pytestmark = pytest.mark.cuda

# name -> (constructor kwargs, (batch, size) cases)
MODELS = {
    "googlenet": ({"transform_input": True}, [(3, 224), (1, 193)]),
    "inception_v3": ({}, [(3, 299)]),
    "timm_inception_v3": ({}, [(1, 331)]),
    "inception_resnet_v2": ({}, [(3, 299), (1, 235)]),
}


@pytest.fixture(autouse=True)
def heuristic_tiles(monkeypatch):
    """Correctness does not depend on the tile choice: take the heuristic, tune nothing."""
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "0")


@pytest.fixture(scope="module")
def source_models():
    cache = {}

    def get(name):
        if name not in cache:
            kwargs, _ = MODELS[name]
            cache[name] = calibrated_model(name, seed=0, **kwargs).cuda()
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@torch.no_grad()
def test_model_within_twice_eager_error(source_models, backend, name, dtype):
    model = source_models(name)
    eager = copy.deepcopy(model).to(dtype).to(memory_format=torch.channels_last)
    fused = optimize(model, backend=backend, dtype=dtype)
    for batch, size in MODELS[name][1]:
        x = torch.randn(batch, 3, size, size, device="cuda")
        ref = model(x)
        out = fused(x.to(dtype))
        assert out.shape == ref.shape and torch.isfinite(out).all()
        two_x_rule(out, eager(x.to(dtype)), ref)


@pytest.mark.parametrize("name", ["googlenet", "inception_resnet_v2"])
@torch.no_grad()
def test_exact_fp32_on_triton(source_models, name):
    """fp32 with TF32 off: exact fp32 dots against eager fp32, both from a float64 reference."""
    model = source_models(name)
    x = torch.randn(2, 3, 224, 224, device="cuda")
    ref = copy.deepcopy(model).double()(x.double())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fused = optimize(model, backend="triton")
        two_x_rule(fused(x), model(x), ref)


@pytest.mark.parametrize("name", ["googlenet", "inception_resnet_v2"])
@torch.no_grad()
def test_tf32_on_triton_rounds_like_tf32(source_models, name):
    """fp32 with TF32 dots (PyTorch's default for convolutions). cuDNN may still pick exact fp32
    algorithms for eager, so the bar is the eager error in TF32's own precision: fp16 inputs
    carry the same 10-bit mantissa."""
    model = source_models(name)
    x = torch.randn(2, 3, 224, 224, device="cuda")
    ref = copy.deepcopy(model).double()(x.double())
    eager16 = copy.deepcopy(model).half()(x.half())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        fused = optimize(model, backend="triton")
        two_x_rule(fused(x), eager16, ref)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "inception_resnet_v2"])
@torch.no_grad()
def test_cuda_graph_mode(source_models, name):
    model = source_models(name)
    fused = optimize(model, backend="triton", dtype=torch.float16, cuda_graph=True)
    for batch in (1, 2, 1):  # a new shape captures a new graph; the old one replays
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(fused(x), fused.run_eager(x), rtol=0, atol=0)
