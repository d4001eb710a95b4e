"""Triton-specific GPU checks: fp32 follows the TF32 switch, the whole-model CUDA-graph mode of
`optimize(cuda_graph=True)`, and torch.compile(fullgraph=True). The checks every kernel backend
shares (blocks, whole model, batch 2048, graph capture) are in test_gpu_backends.py."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import assert_follows_the_tf32_switch, block_input, make_block

from inception_fast import optimize
from inception_fast.modules import fuse_block

pytestmark = pytest.mark.cuda


@torch.no_grad()
def test_fp32_follows_the_tf32_switch():
    block, cin, size = make_block("InceptionB")
    x = block_input(4, cin, size)
    ref = block.double()(x.double())
    fused = fuse_block(block.float())
    fused.backend = "triton"
    assert_follows_the_tf32_switch(fused, x, ref)


@torch.no_grad()
def test_cuda_graph_mode(calibrated_model):
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend="triton", dtype=torch.float16, cuda_graph=True)
    plain = optimize(model, backend="triton", dtype=torch.float16)
    for _ in range(2):  # capture, then replay on fresh inputs
        x = torch.randn(2, 3, 299, 299, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)
    assert len(fused.graph_cache) == 1


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@torch.no_grad()
def test_torch_compile_fullgraph(calibrated_model, compiler):
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend="triton", dtype=torch.float16)
    x = torch.randn(2, 3, 299, 299, device="cuda", dtype=torch.float16)
    expected = fused(x)  # packs and tunes outside the trace
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)
    torch.testing.assert_close(compiled(x), expected, rtol=2e-3, atol=2e-3)
