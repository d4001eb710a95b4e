"""The CUTLASS sm90 1x1-conv GEMM op on a Hopper GPU: Inception-v4's 1x1 shapes at odd pixel
counts, fp16, bf16 and fp32 on TF32 (inputs rounded to TF32, as the backends give them), ReLU on
and off, every tile shape (64 x 64 in fp16 and bf16), written into a channel slice of a wider
output. Against float64: at most twice cuDNN's own error (F.conv2d in the same dtype; TF32 for
fp32) plus 1e-6 (TF32: plus its output rounding, 2^-11); the channels outside the slice keep
their sentinel; TF32 outputs are rounded to TF32. Skipped without the CUTLASS headers or off
Hopper (the kernels are sm_90a only); benchmarks/device/wgmma_check.py runs the full grid and
times it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inception_fast import extension
from inception_fast.kernels.triton.launch_state import round_to_tf32
from inception_fast.testing import relative_l2

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(extension.cutlass_include_dir() is None,
                       reason="no CUTLASS headers (pip install nvidia-cutlass)"),
]
SENTINEL = 1234.0


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS kernels are built for sm_90a (Hopper) only")
    extension.load()


def _problem(batch, size, k, n, dtype, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, size, size, k, device="cuda", generator=generator).relu_().to(dtype)
    weight = (torch.randn(n, k, device="cuda", generator=generator) / k**0.5).to(dtype)
    bias = torch.randn(n, device="cuda", generator=generator) * 0.1
    if dtype == torch.float32:  # TF32 operands, as the backends store and pack them
        x, weight = round_to_tf32(x), round_to_tf32(weight)
    return x, weight, bias


def assert_tf32_values(t: torch.Tensor, case) -> None:
    """fp32 values with TF32's 10 mantissa bits only (the epilogue rounds what it stores)."""
    assert (t.contiguous().view(torch.int32) & 0x1FFF == 0).all(), case


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "tf32"])
@pytest.mark.parametrize(("batch", "size", "k", "n"), [
    (3, 35, 384, 96), (3, 35, 384, 224), (1, 17, 1024, 192), (5, 17, 1024, 768), (3, 8, 1536, 384),
    (1, 8, 1536, 1024),
])
def test_matches_float64_within_twice_cudnn_error_and_keeps_other_channels(batch, size, k, n, dtype):
    x, weight, bias = _problem(batch, size, k, n, dtype, seed=k + n + batch)
    tf32 = dtype == torch.float32
    slack = 2.0**-11 if tf32 else 1e-6  # TF32 outputs: rounded to nearest, at most half of 2^-10 apart
    m = x.numel() // k
    exact = x.reshape(m, k).double() @ weight.double().T + bias.double()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):  # cuDNN's TF32 for fp32
        cudnn = F.conv2d(x.permute(0, 3, 1, 2), weight.reshape(n, k, 1, 1), bias.to(dtype))
    cudnn = cudnn.permute(0, 2, 3, 1).reshape(m, n)
    for relu in (False, True):
        reference = exact.relu() if relu else exact
        cudnn_error = relative_l2(cudnn.relu() if relu else cudnn, reference)
        for col_offset, extra in ((0, 0), (40, 24)):
            channels = col_offset + n + extra
            # (tile_n, tile_m): the op's choice, 128-row tiles of each width, 64 x 64 tiles
            for tile, tile_m in ((0, 0), (64, 128), (128, 128), (256, 128), (64, 64)):
                if tf32 and tile_m == 64:
                    continue  # built for fp16 and bf16
                out = torch.full((batch, size, size, channels), SENTINEL, device="cuda", dtype=dtype)
                gemm = torch.ops.inception_fast.cuda_gemm_conv1x1
                gemm(x, weight, bias, out, col_offset, relu, tile, tf32, 0, 0, tile_m)
                flat = out.reshape(m, channels)
                error = relative_l2(flat[:, col_offset:col_offset + n], reference)
                case = f"relu={relu} col_offset={col_offset} tile={tile_m}x{tile}"
                assert error <= 2 * cudnn_error + slack, (case, error, cudnn_error)
                if tf32:
                    assert_tf32_values(flat[:, col_offset:col_offset + n], case)
                assert (flat[:, :col_offset] == SENTINEL).all(), case
                assert (flat[:, col_offset + n:] == SENTINEL).all(), case


def test_rejects_a_slice_that_tma_cannot_address():
    x, weight, bias = _problem(2, 8, 64, 32, torch.float16, seed=0)
    out = torch.zeros(2, 8, 8, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="col_offset 4 must be a multiple of 8"):
        torch.ops.inception_fast.cuda_gemm_conv1x1(x, weight, bias, out, 4, False)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        misaligned = x.flatten()[4:4 + 127 * 64].view(127, 64)  # 8 bytes past an aligned start
        out_rows = out.flatten()[64:].view(127, 64)
        torch.ops.inception_fast.cuda_gemm_conv1x1(misaligned, weight, bias, out_rows, 0, False)


def test_fp32_runs_only_when_tf32_is_asked_for():
    x, weight, bias = _problem(2, 8, 64, 32, torch.float32, seed=0)
    out = torch.zeros(2, 8, 8, 32, device="cuda")
    with pytest.raises(RuntimeError, match="pass tf32=True"):
        torch.ops.inception_fast.cuda_gemm_conv1x1(x, weight, bias, out, 0, False)
    half = torch.zeros(2, 8, 8, 32, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="tf32=True is for float32"):
        torch.ops.inception_fast.cuda_gemm_conv1x1(x.half(), weight.half(), bias, half, 0, False, 0, True)


@pytest.mark.parametrize("sm_limit", [2, 9, 66, 1000])
def test_a_share_of_the_sms_computes_the_same_bits(sm_limit):
    """Fewer persistent CTAs (an odd limit rounds down to whole clusters; one past the GPU is the
    GPU) walk the same tiles: every tile's sum runs in the same order, so the bits match."""
    x, weight, bias = _problem(7, 17, 1024, 384, torch.float16, seed=sm_limit)
    outs = []
    for limit in (0, sm_limit):
        out = torch.zeros(7, 17, 17, 384, device="cuda", dtype=torch.float16)
        torch.ops.inception_fast.cuda_gemm_conv1x1(x, weight, bias, out, 0, True, 0, False, limit)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(RuntimeError, match="sm_limit must be 0"):
        torch.ops.inception_fast.cuda_gemm_conv1x1(x, weight, bias, outs[0], 0, True, 0, False, -1)
