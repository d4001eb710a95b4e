"""The host side of the stage kernel (`stage_kernel`): its grid, its split-K buffers and its
launch, on torch tensors. Apart from the kernel, which compile workers import without torch."""

from __future__ import annotations

import torch
import triton

from ... import packing as pk
from .. import programmatic_launch
from . import launch_state


def stage_tiles(stage: pk.PackedStage, n: int, h: int, w: int, block_m: int, block_n: int,
                k_parts: int = 1) -> int:
    """Programs one launch needs: every problem's tiles, conv tiles times the split-K parts
    (host side, no device sync)."""
    total = 0
    for p, row in enumerate(stage.rows):
        oh, ow = stage.output_hw(p, h, w)
        tiles = triton.cdiv(n * oh * ow, block_m) * triton.cdiv(row[pk.COLS], block_n)
        total += tiles * (k_parts if row[pk.KIND] == pk.CONV else 1)
    return total


def split_k_slots(stage: pk.PackedStage, n: int, h: int, w: int, block_m: int, block_n: int) -> int:
    """Conv output tiles of a launch: the split-K scratch holds one fp32 tile per slot."""
    slots = 0
    for p, row in enumerate(stage.rows):
        if row[pk.KIND] == pk.CONV:
            oh, ow = stage.output_hw(p, h, w)
            slots += triton.cdiv(n * oh * ow, block_m) * triton.cdiv(row[pk.COLS], block_n)
    return slots


def launch_stage_tensors(
    kernel, num_tiles, x, work, out, problems, weights, bias, col_dst, col_flags, config, precision,
    has_conv=True, has_pool=True, has_residual=False, scratch=None, counts=None,
):
    """Launch `kernel` (the raw kernel, or wrap_triton(kernel) inside a triton_op).

    x, work, out: NCHW-shaped tensors stored channels_last (NHWC in memory); `work` may be a
    small dummy when the block has no intermediates. config: (BLOCK_M, BLOCK_N, BLOCK_K,
    num_warps, num_stages, k_parts). precision: "tf32" or "ieee" for fp32 dots. has_conv /
    has_pool / has_residual: which problem kinds and epilogue columns the stage holds
    (`stage_kinds`). With k_parts > 1, `scratch` (fp32,
    k_parts BLOCK_M x BLOCK_N tiles per conv output tile) and `counts` (int32, one per tile,
    zero on the first launch; the kernel leaves them zero) hold the partial sums.
    """
    block_m, block_n, block_k, num_warps, num_stages, k_parts = config
    n, _, h, w = x.shape
    wide = max(x.numel(), work.numel(), out.numel()) >= 2**31
    split = k_parts > 1
    pdl = programmatic_launch.enabled(x.device)
    kernel[(num_tiles,)](
        x, work, out, weights, bias, col_dst, col_flags, problems,
        scratch if split else bias, counts if split else col_dst,
        n, h, w, x.shape[1], work.shape[1], out.shape[1], problems.shape[0], k_parts,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, INPUT_PRECISION=precision,
        HAS_CONV=has_conv, HAS_POOL=has_pool, HAS_RESIDUAL=has_residual, WIDE_INDEX=wide, SPLIT_K=split,
        PDL=pdl, num_warps=num_warps, num_stages=num_stages, launch_pdl=pdl,
    )


def stage_kinds(stage: pk.PackedStage) -> tuple[bool, bool, bool]:
    """(has a conv problem, has a pool problem, has a residual column): the kernel's
    HAS_CONV, HAS_POOL and HAS_RESIDUAL."""
    kinds = {row[pk.KIND] for row in stage.rows}
    return pk.CONV in kinds, bool(kinds - {pk.CONV}), stage.residual


def split_k_buffers(stage, n, h, w, config, device):
    """Zeroed scratch and counters for a split-K launch (None when the config does not split)."""
    block_m, block_n, *_, k_parts = config
    if k_parts == 1:
        return None, None
    slots = split_k_slots(stage, n, h, w, block_m, block_n)
    scratch = torch.empty(slots * k_parts * block_m * block_n, dtype=torch.float32, device=device)
    return scratch, torch.zeros(slots, dtype=torch.int32, device=device)


def launch_stage(kernel, stage, x, work, out, config, precision="tf32"):
    """Launch one packed stage (used directly under TRITON_INTERPRET=1). Nothing is kept: the
    split-K buffers and, with precision "tf32" on fp32, the rounded weights are made for this
    launch. precision: "tf32" or "ieee" (fp32 only; fp16/bf16 ignore it)."""
    if len(config) == 5:
        config = (*config, 1)
    n, _, h, w = x.shape
    tiles = stage_tiles(stage, n, h, w, config[0], config[1], config[5])
    scratch, counts = split_k_buffers(stage, n, h, w, config, x.device)
    tf32 = precision == "tf32" and stage.weights.dtype == torch.float32  # rounding reads fp32 bits
    weights = launch_state.round_to_tf32(stage.weights) if tf32 else stage.weights
    launch_stage_tensors(
        kernel, tiles, x, work, out, stage.problems, weights, stage.bias,
        stage.col_dst, stage.col_flags, config, precision, *stage_kinds(stage), scratch, counts,
    )
