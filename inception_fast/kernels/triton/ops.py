"""The Triton kernels as `torch.library` ops (namespace `inception_fast`), so that
torch.compile(fullgraph=True) traces through them and CUDA graphs capture them."""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .block_kernel import _block_kernel, launch_block_tensors
from .layout_kernel import _to_nhwc_padded_kernel, launch_to_nhwc_padded
from .stage_kernel import _stage_kernel, launch_stage_tensors


@triton_op("inception_fast::triton_stage", mutates_args={"work", "out", "scratch", "counts"})
def triton_stage(
    x: torch.Tensor,
    work: torch.Tensor,
    out: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    col_dst: torch.Tensor,
    col_flags: torch.Tensor,
    scratch: torch.Tensor,
    counts: torch.Tensor,
    num_tiles: int,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    k_parts: int,
    tf32: bool,
    has_conv: bool,
    has_pool: bool,
    has_residual: bool = False,
) -> None:
    """One stage of a block: x [N,Cin,H,W], work [N,Cw,H,W], out [N,Cout,OH,OW], all stored
    channels_last; the rest is a `packing.PackedStage`; num_tiles from `stage_tiles`;
    scratch / counts: split-K buffers from `split_k_buffers` (unused when k_parts == 1)."""
    launch_stage_tensors(
        wrap_triton(_stage_kernel), num_tiles, x, work, out, problems, weights, bias, col_dst,
        col_flags, (block_m, block_n, block_k, num_warps, num_stages, k_parts),
        "tf32" if tf32 else "ieee", has_conv, has_pool, has_residual, scratch, counts,
    )


@triton_op("inception_fast::triton_block", mutates_args={"work", "out", "counters", "scratch", "counts"})
def triton_block(
    x: torch.Tensor,
    work: torch.Tensor,
    out: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    col_dst: torch.Tensor,
    col_flags: torch.Tensor,
    schedule: torch.Tensor,
    deps: torch.Tensor,
    counters: torch.Tensor,
    scratch: torch.Tensor,
    counts: torch.Tensor,
    num_programs: int,
    num_tickets: int,
    block_m: int,
    block_n: int,
    block_k: int,
    num_warps: int,
    num_stages: int,
    k_parts: int,
    tf32: bool,
    has_conv: bool,
    has_pool: bool,
    has_residual: bool = False,
) -> None:
    """A whole block in one persistent launch: x [N,Cin,H,W], work [N,Cw,H,W], out
    [N,Cout,OH,OW], all stored channels_last; problems ... col_flags: every stage's packed table
    concatenated; schedule, deps, counters and num_tickets from `block_kernel.block_schedule`
    (counters zero before the first launch; the kernel leaves them zero); scratch / counts:
    split-K buffers from `block_kernel.split_k_buffers` (unused when k_parts == 1)."""
    launch_block_tensors(
        wrap_triton(_block_kernel), num_programs, num_tickets, x, work, out, problems, weights, bias,
        col_dst, col_flags, schedule, deps, counters, scratch, counts,
        (block_m, block_n, block_k, num_warps, num_stages, k_parts), "tf32" if tf32 else "ieee",
        has_conv, has_pool, has_residual,
    )


@triton_op("inception_fast::triton_to_nhwc_padded", mutates_args={"out"})
def triton_to_nhwc_padded(x: torch.Tensor, out: torch.Tensor, round_tf32: bool = False) -> None:
    """x [N,C,H,W] (any strides) -> out [N,C_PAD,H,W] channels_last, extra channels zero;
    fp32 values rounded to TF32 when round_tf32."""
    launch_to_nhwc_padded(wrap_triton(_to_nhwc_padded_kernel), x, out, round_tf32)
