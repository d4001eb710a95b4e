"""The kernel backends (`triton`, `cuda`) on the GPU, each held to the same checks: every block
and the whole model against the `torch` backend and the fp32 reference in fp16 and bf16, odd
batches, NaN-poisoned outputs, batch 2048 for 64-bit offsets, and capture in a user's CUDA graph.
Backend-specific checks live in test_triton_backend.py and test_cuda_backend.py."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import BLOCKS, LOW_PRECISION, block_input, make_block, two_x_rule

from inception_fast import optimize
from inception_fast.modules import fuse_block
from inception_fast.testing import relative_l2

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 3, 32])
@torch.no_grad()
def test_block_matches_reference(backend, name, dtype, batch):
    block, cin, size = make_block(name)
    x = block_input(batch, cin, size, channels_last=batch == 3)
    ref = block(x)
    eager = copy.deepcopy(block).to(dtype)(x.to(dtype))
    fused = fuse_block(block).to(dtype)
    torch_out = fused(x.to(dtype))
    fused.backend = backend
    out = fused(x.to(dtype))
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all(), "a channel slice was never written"
    two_x_rule(out, eager, ref)
    two_x_rule(out, torch_out, ref)


@torch.no_grad()
def test_batch_2048_passes_int32_offsets(backend):
    # features.2 reads 2048 x 32 x 147 x 147 and writes 2048 x 64 x 147 x 147 = 2.8e9 elements.
    block, cin, size = make_block("Stem2")
    x = block_input(2048, cin, size, torch.float16)
    fused = fuse_block(block).half()
    fused.backend = backend
    out = fused(x)
    assert torch.isfinite(out).all()
    for lo in (0, 1000, 2047):  # the far end is where a 32-bit offset would wrap
        ref = block(x[lo : lo + 1].float())
        assert relative_l2(out[lo : lo + 1], ref) < 5e-3


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch,size", [(1, 299), (5, 299), (2, 331)])
@torch.no_grad()
def test_whole_model(calibrated_model, backend, dtype, batch, size):
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, size, size, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).to(dtype)(x.to(dtype))
    out = optimize(model, backend=backend, dtype=dtype)(x.to(dtype))
    two_x_rule(out, eager, ref)


@torch.no_grad()
def test_capture_in_user_cuda_graph(calibrated_model, backend):
    """A user's CUDA graph around the fused model replays it on new inputs, bit for bit."""
    fused = optimize(copy.deepcopy(calibrated_model).cuda(), backend=backend, dtype=torch.float16)
    static_x = torch.randn(1, 3, 299, 299, device="cuda", dtype=torch.float16)
    expected = fused(static_x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fused(static_x)
    static_x.copy_(torch.randn_like(static_x))
    graph.replay()
    torch.testing.assert_close(static_out, fused(static_x), rtol=0, atol=0)
    assert not torch.equal(static_out, expected)
