"""Both kernel backends on the GPU, on the hand-built stages of `stage_cases` at network-like
sizes: ceil-mode pools, the include-pad average pool, the residual epilogue and 1x1 to 7x7
windows, against the same computation in PyTorch ops (the 2x rule in fp16 and bf16; exact fp32
dots to rounding), with NaN-poisoned outputs. Then the op checks for the new fields."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gpu_blocks import ABS_SLACK, LOW_PRECISION, two_x_rule
from stage_cases import CASES, kernel_buffers, make_case

from inception_fast import packing as pk
from inception_fast.backends import backend_status
from inception_fast.kernels.triton import ops as triton_ops
from inception_fast.kernels.triton.stage_launch import split_k_buffers, stage_kinds, stage_tiles
from inception_fast.testing import relative_l2

pytestmark = pytest.mark.cuda


def _require(backend):
    ok, reason = backend_status(backend, "cuda")
    if not ok:
        pytest.fail(f"the {backend} backend must work on a GPU machine: {reason}")


def run_triton(case, dtype, config, stages=None):
    """Every stage of the case through the registered Triton op, as the backend launches it."""
    x, work, out = kernel_buffers(case, dtype, "cuda")
    triton_ops.register_all()  # registered on a first trace otherwise
    tf32 = False  # exact fp32 dots: fp32 results must match to rounding
    for stage in stages or case.packed("cuda", dtype):
        n, _, h, w = x.shape
        scratch, counts = split_k_buffers(stage, n, h, w, config, x.device)
        if scratch is None:
            scratch = torch.empty(1, dtype=torch.float32, device="cuda")
            counts = torch.empty(1, dtype=torch.int32, device="cuda")
        torch.ops.inception_fast.triton_stage(
            x, work, out, stage.problems, stage.weights, stage.bias, stage.col_dst,
            stage.col_flags, scratch, counts, stage_tiles(stage, n, h, w, config[0], config[1], config[5]),
            *config, tf32, *stage_kinds(stage),
        )
    return out


def run_cuda(case, dtype, stages=None):
    """Every stage of the case through the extension's op (NHWC views of the same buffers)."""
    x, work, out = kernel_buffers(case, dtype, "cuda")
    work_nhwc = work.permute(0, 2, 3, 1) if case.work_channels else x.new_empty(0)
    op = torch.ops.inception_fast.cuda_conv_stage.default
    for stage in stages or case.packed("cuda", dtype):
        rows = [int(v) for row in stage.rows for v in row]
        op(x.permute(0, 2, 3, 1), work_nhwc, out.permute(0, 2, 3, 1), rows, stage.weights, stage.bias,
           stage.col_dst, stage.col_flags)
    return out


def _check(out, case, dtype):
    expected = case.expected().cuda()
    assert out.shape == expected.shape
    assert torch.isfinite(out).all(), "a channel slice was never written (or a NaN came out)"
    if dtype == torch.float32:
        assert relative_l2(out, expected) < 1e-5
    else:
        two_x_rule(out, case.torch_ops(case.x.cuda().to(dtype)), expected)


def _block_k(case):
    return 16 if case.x.shape[1] < 32 else 32


TRITON_CONFIGS = [(128, 128, 8, 3, 1), (64, 64, 4, 4, 4)]  # BLOCK_M, BLOCK_N, warps, stages, split-K


@pytest.mark.parametrize("config", TRITON_CONFIGS, ids=["128x128", "64x64-split4"])
@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_triton_stage_ops(name, dtype, config):
    _require("triton")
    case = make_case(name, gpu_size=True)
    bm, bn, warps, stages, parts = config
    _check(run_triton(case, dtype, (bm, bn, _block_k(case), warps, stages, parts)), case, dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_cuda_stage_ops(name, dtype):
    _require("cuda")
    case = make_case(name, gpu_size=True)
    _check(run_cuda(case, dtype), case, dtype)


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_backends_agree_on_stage_ops(name):
    """The two kernels on the same packed stages: fp16 results within fp16 rounding of each other."""
    _require("triton")
    _require("cuda")
    case = make_case(name, gpu_size=True, seed=1)
    triton_out = run_triton(case, torch.float16, (64, 128, _block_k(case), 4, 4, 1))
    cuda_out = run_cuda(case, torch.float16)
    assert relative_l2(triton_out, cuda_out) < 2 * ABS_SLACK


def _resizing_residual_stage():
    """residual_relu's stage with its 1x1 conv at stride 2: the output is no longer the
    input's size. The packer refuses it; built here by hand, as a bad caller could."""
    case = make_case("residual_relu", gpu_size=True)
    (stage,) = case.packed("cuda", torch.float16)
    rows = [list(stage.rows[0])]
    rows[0][pk.STRIDE] = 2
    stage = dataclasses.replace(stage, rows=rows, problems=torch.tensor(rows, device="cuda"))
    _, _, h, w = case.x.shape
    return dataclasses.replace(case, out_hw=(-(-h // 2), -(-w // 2))), stage


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@torch.no_grad()
def test_residual_of_a_resizing_problem_stores_nan(backend):
    """The kernels cannot raise, so a residual column whose output pixel is not an input pixel
    stores NaN: loud, never a value read from the wrong pixel."""
    _require(backend)
    case, stage = _resizing_residual_stage()
    if backend == "triton":
        out = run_triton(case, torch.float16, (64, 64, 32, 4, 4, 1), [stage])
    else:
        out = run_cuda(case, torch.float16, [stage])
    assert torch.isnan(out).all()


def test_cuda_op_checks_the_new_fields():
    _require("cuda")
    kw = {"dtype": torch.float16, "device": "cuda"}
    x, out = torch.randn(1, 8, 10, 64, **kw), torch.empty(1, 4, 5, 64, **kw)
    bias, dst = torch.zeros(64, device="cuda"), torch.arange(64, dtype=torch.int32, device="cuda")
    flags = torch.full((64,), pk.FLAG_TO_OUTPUT, dtype=torch.int32, device="cuda")
    op = torch.ops.inception_fast.cuda_conv_stage
    ceil_max = [pk.MAX_POOL, 0, 0, 64, 64, 3, 3, 2, 0, 0, -1, 0, 1]

    def call(row):
        op(x, x.new_empty(0), out, row, x.new_empty(0), bias, dst, flags)

    call(ceil_max)  # 8x10 -> 4x5 only in ceil mode
    torch.testing.assert_close(
        out.permute(0, 3, 1, 2), torch.nn.functional.max_pool2d(x.permute(0, 3, 1, 2), 3, 2, ceil_mode=True),
        rtol=0, atol=0,
    )
    with pytest.raises(RuntimeError, match="CEIL 2"):
        call([*ceil_max[:-1], 2])
    with pytest.raises(RuntimeError, match="ceil_mode is for max"):
        call([pk.AVG_POOL_INCLUDE_PAD, *ceil_max[1:]])
    with pytest.raises(RuntimeError, match="unknown kind 4"):
        call([4, *ceil_max[1:]])
    with pytest.raises(RuntimeError, match="beyond half"):
        call([pk.MAX_POOL, 0, 0, 64, 64, 3, 3, 2, 2, 2, -1, 0, 0])
