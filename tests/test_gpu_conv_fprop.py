"""The CUTLASS sm90 implicit-GEMM k x k conv op (`cuda_conv_fprop`) on a Hopper GPU: the kxk
conv shapes of the Inception family (3x3 stride 1 and 2, 1x7 / 7x1, 1x3 / 3x1, 5x5; padded and
not) at odd batches and sizes, fp16, bf16 and fp32 on TF32 (inputs rounded to TF32, as the
backends give them), each tile shape (128 rows by 128, 96 or 64 channels; 256 rows by 128 or 96 in
fp16 and bf16; the op's own choice), ReLU on and off,
reading a channel slice of a wider input and writing a channel slice of a wider output. Against
float64: at most twice cuDNN's own error (F.conv2d in the same dtype; TF32 for fp32) plus 1e-6
(TF32: plus its output rounding, 2^-11); the output channels outside the slice keep their
sentinel; TF32 outputs are rounded to TF32. Skipped without the CUTLASS headers or off Hopper."""

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

# (batch, height, width, in channels, out channels, (r, s), stride, (pad_h, pad_w))
SHAPES = [
    (3, 35, 35, 64, 96, (3, 3), 1, (1, 1)),  # Inception-v4 InceptionA
    (2, 35, 35, 384, 384, (3, 3), 2, (0, 0)),  # ReductionA
    (3, 17, 17, 192, 224, (1, 7), 1, (0, 3)),  # InceptionB
    (1, 17, 17, 224, 256, (7, 1), 1, (3, 0)),
    (3, 8, 8, 384, 256, (1, 3), 1, (0, 1)),  # InceptionC / Inception-v3 E
    (3, 8, 8, 384, 256, (3, 1), 1, (1, 0)),
    (2, 28, 28, 16, 32, (5, 5), 1, (2, 2)),  # the Inception-V1 module's 5x5
    (1, 147, 147, 32, 64, (3, 3), 1, (1, 1)),  # the stem
]


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS kernels are built for sm_90a (Hopper) only")
    extension.load()


def _case_id(shape) -> str:
    _, height, width, c, k, (r, s), stride, _ = shape
    return f"{r}x{s}s{stride}-{height}x{width}-{c}-{k}"


# (tile_m, tile_n); 0: the op's
TILES = [(128, 128), (128, 96), (128, 64), (64, 64), (256, 128), (256, 96), (0, 0)]


@pytest.mark.parametrize("tile", TILES, ids=[f"tile{m}x{n}" if m else "tile-chosen" for m, n in TILES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "tf32"])
@pytest.mark.parametrize("shape", SHAPES, ids=_case_id)
def test_matches_float64_within_twice_cudnn_error_and_keeps_other_channels(shape, dtype, tile):
    batch, height, width, c, k, (r, s), stride, (pad_h, pad_w) = shape
    tile_m, tile_n = tile
    tf32 = dtype == torch.float32
    if tf32 and tile_m in (64, 256):
        pytest.skip("64- and 256-row tiles are built for fp16 and bf16")
    slack = 2.0**-11 if tf32 else 1e-6  # TF32 outputs: rounded to nearest, at most half of 2^-10 apart
    generator = torch.Generator(device="cuda").manual_seed(c * 7 + k)
    in_c0, in_pitch = 8, c + 16  # the conv reads channels [8, 8 + c) of a wider buffer
    x = torch.randn(batch, height, width, in_pitch, device="cuda", generator=generator).relu_().to(dtype)
    weight = (torch.randn(k, r, s, c, device="cuda", generator=generator) / (r * s * c) ** 0.5).to(dtype)
    bias = torch.randn(k, device="cuda", generator=generator) * 0.1
    if tf32:  # TF32 operands, as the backends store and pack them
        x, weight = round_to_tf32(x), round_to_tf32(weight)
    source = x[..., in_c0:in_c0 + c].permute(0, 3, 1, 2)
    kernel = weight.permute(0, 3, 1, 2)
    exact = F.conv2d(source.double(), kernel.double(), bias.double(), stride, (pad_h, pad_w))
    source = source.contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):  # cuDNN's TF32 for fp32
        cudnn = F.conv2d(source, kernel, bias.to(dtype), stride, (pad_h, pad_w))
    p, q = exact.shape[2:]
    for relu in (False, True):
        reference = exact.relu() if relu else exact
        cudnn_error = relative_l2(cudnn.relu() if relu else cudnn, reference)
        for out_c0, extra in ((0, 0), (40, 24)):
            channels = out_c0 + k + extra
            out = torch.full((batch, p, q, channels), SENTINEL, device="cuda", dtype=dtype)
            conv = torch.ops.inception_fast.cuda_conv_fprop
            conv(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, relu, tile_n, tf32, 0, tile_m)
            got = out[..., out_c0:out_c0 + k].permute(0, 3, 1, 2)
            error = relative_l2(got, reference)
            case = f"relu={relu} out_c0={out_c0}"
            assert error <= 2 * cudnn_error + slack, (case, error, cudnn_error)
            if tf32:  # rounded to TF32 on the way out: 10 mantissa bits
                assert (got.contiguous().view(torch.int32) & 0x1FFF == 0).all(), case
            assert (out[..., :out_c0] == SENTINEL).all(), case
            assert (out[..., out_c0 + k:] == SENTINEL).all(), case


def test_rejects_a_slice_that_tma_cannot_address():
    x = torch.zeros(2, 9, 9, 64, device="cuda", dtype=torch.float16)
    weight = torch.zeros(32, 3, 3, 16, device="cuda", dtype=torch.float16)
    bias = torch.zeros(32, device="cuda")
    out = torch.zeros(2, 9, 9, 32, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="in_c0 4 must be a multiple of 8"):
        torch.ops.inception_fast.cuda_conv_fprop(x, weight, bias, out, 4, 0, 1, 1, 1, False)


def test_fp32_runs_only_when_tf32_is_asked_for():
    x = torch.zeros(2, 9, 9, 16, device="cuda")
    weight = torch.zeros(32, 3, 3, 16, device="cuda")
    bias = torch.zeros(32, device="cuda")
    out = torch.zeros(2, 9, 9, 32, device="cuda")
    with pytest.raises(RuntimeError, match="pass tf32=True"):
        torch.ops.inception_fast.cuda_conv_fprop(x, weight, bias, out, 0, 0, 1, 1, 1, False)


@pytest.mark.parametrize("tile_m", [128, 256])
@pytest.mark.parametrize("sm_limit", [2, 9, 66, 1000])
def test_a_share_of_the_sms_computes_the_same_bits(sm_limit, tile_m):
    """Fewer persistent CTAs (an odd limit rounds down to whole clusters; one past the GPU is the
    GPU) walk the same tiles: every tile's sum runs in the same order, so the bits match."""
    generator = torch.Generator(device="cuda").manual_seed(sm_limit)
    x = torch.randn(5, 35, 35, 96, device="cuda", generator=generator).half()
    weight = (torch.randn(96, 3, 3, 64, device="cuda", generator=generator) / 24).half()
    bias = torch.randn(96, device="cuda", generator=generator)
    outs = []
    for limit in (0, sm_limit):
        out = torch.zeros(5, 35, 35, 96, device="cuda", dtype=torch.float16)
        torch.ops.inception_fast.cuda_conv_fprop(x, weight, bias, out, 32, 0, 1, 1, 1, True, 96, False, limit,
                                                 tile_m)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(RuntimeError, match="sm_limit must be 0"):
        torch.ops.inception_fast.cuda_conv_fprop(x, weight, bias, outs[0], 32, 0, 1, 1, 1, True, 0, False, -1)
