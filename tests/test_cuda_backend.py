"""CUDA-extension-specific GPU checks: odd and strided inputs, the head, the fp32 fallback,
the op's argument checks, opcheck and torch.compile. The checks every kernel backend shares
(blocks, whole model, batch 2048, graph capture) are in test_gpu_backends.py."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import (
    LOW_PRECISION,
    block_input,
    make_block,
    two_x_rule,
)

from inception_fast import optimize
from inception_fast.backends import cuda_backend
from inception_fast.modules import fuse_block
from inception_fast.testing import relative_l2

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True, scope="module")
def extension_available():
    ok, reason = cuda_backend.availability()
    if not ok:
        pytest.fail(f"the CUDA extension must load on a GPU machine: {reason}")


@pytest.mark.parametrize("name", ["Stem0", "Mixed4a", "InceptionB", "InceptionC"])
@torch.no_grad()
def test_odd_sizes_and_a_stridedblock_input(name):
    block, cin, size = make_block(name)
    x = block_input(5, cin, size + 2)[..., 1:, :-2]  # a non-contiguous view, H != W
    fused = fuse_block(block).half()
    expected = fused(x.half())
    fused.backend = "cuda"
    got = fused(x.half())
    assert torch.isfinite(got).all()
    assert relative_l2(got, expected) < 5e-3


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@torch.no_grad()
def test_head_matches_reference(calibrated_model, dtype):
    """The head's two plans (global average pool, classifier) on the CUDA kernel."""
    linear = copy.deepcopy(calibrated_model.last_linear).cuda()
    x = torch.randn(7, 1536, 8, 8, device="cuda").relu_()
    ref = linear(x.mean((2, 3)))
    eager = linear.to(dtype)(x.to(dtype).mean((2, 3)))
    network = optimize(calibrated_model, backend="cuda", dtype=dtype, device="cuda")
    two_x_rule(network.forward_head(x.to(dtype)), eager, ref)


@torch.no_grad()
def test_fp32_runs_on_pytorch_ops():
    block, cin, size = make_block("InceptionA")
    x = block_input(2, cin, size)
    fused = fuse_block(block)
    expected = fused(x)
    fused.backend = "cuda"
    torch.testing.assert_close(fused(x), expected)


def test_op_checks_name_the_bad_argument():
    kw = {"dtype": torch.float16, "device": "cuda"}
    x, out = torch.empty(1, 9, 9, 64, **kw), torch.empty(1, 4, 4, 64, **kw)
    bias, dst = torch.zeros(64, device="cuda"), torch.arange(64, dtype=torch.int32, device="cuda")
    op = torch.ops.inception_fast.cuda_conv_stage
    maxpool = [2, 0, 0, 64, 64, 3, 3, 2, 0, 0, -1, 0, 0]
    # Distinct empty tensors: the mutable `work` must alias no other argument.
    work, weights = x.new_empty(0), x.new_empty(0)
    with pytest.raises(RuntimeError, match="multiples of 8"):
        op(x, work, out, [2, 0, 4, 56, 56, 3, 3, 2, 0, 0, -1, 0, 0], weights, bias, dst, dst.clone())
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, work, out.float(), maxpool, weights, bias, dst, dst.clone())
    with pytest.raises(RuntimeError, match="col_dst must be Int"):
        op(x, work, out, maxpool, weights, bias, dst.long(), dst.clone())
    with pytest.raises(RuntimeError, match="rows of 13"):
        op(x, work, out, maxpool[:-1], weights, bias, dst, dst.clone())


def test_opcheck():
    kw = {"dtype": torch.bfloat16, "device": "cuda"}
    x, out = torch.randn(2, 9, 9, 64, **kw), torch.empty(2, 4, 4, 64, **kw)
    bias, dst = torch.zeros(64, device="cuda"), torch.arange(64, dtype=torch.int32, device="cuda")
    flags = torch.full((64,), 2, dtype=torch.int32, device="cuda")
    maxpool = [2, 0, 0, 64, 64, 3, 3, 2, 0, 0, -1, 0, 0]
    args = (x, x.new_empty(0), out, maxpool, x.new_empty(0), bias, dst, flags)
    op = torch.ops.inception_fast.cuda_conv_stage.default
    op(*args)
    expected = torch.nn.functional.max_pool2d(x.permute(0, 3, 1, 2), 3, 2)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), expected, rtol=0, atol=0)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@torch.no_grad()
def test_torch_compile_fullgraph(calibrated_model):
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend="cuda", dtype=torch.float16)
    x = torch.randn(2, 3, 299, 299, device="cuda", dtype=torch.float16)
    expected = fused(x)  # packs outside the trace
    compiled = torch.compile(fused, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=2e-3, atol=2e-3)
