"""The host side of the per-block kernel (`block_kernel`): the schedule it reads (its format is
in `block_kernel`'s docstring), built per input shape; its split-K buffers; how many programs
per SM; and its launch on torch tensors. Apart from the kernel, which compile workers import
without torch."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from ... import packing as pk


class BlockSchedule(NamedTuple):
    schedule: list  # [P][SCHED_FIELDS]
    deps: list  # [D][2], never empty (a dummy row when nothing waits)
    tickets: int  # tiles, conv tiles counted once per split-K part
    counters: int  # length of the counters tensor
    slots: int  # conv tiles: the split-K scratch holds k_parts fp32 tiles per slot


def block_schedule(rows, deps, n: int, h: int, w: int, block_m: int, block_n: int,
                   k_parts: int = 1) -> BlockSchedule:
    """The per-shape schedule of a packed block (host side, no device sync).

    rows: the packed table (`PackedStage.rows`, every stage's problems in stage order).
    deps: per problem, a list of (producer index < its own, whole) pairs: whole = False where
    the problem reads the producer's output through its window, True where it must wait for
    all of it. A window dependency on a producer whose output is not at the block's input size
    (the grid that windows index) becomes whole. k_parts: split-K parts of every conv tile."""
    produces = {q for producers in deps for q, _ in producers}
    schedule, dep_rows, keeps_grid = [], [], []
    tickets, counters, slots = 0, 1, 0  # counters[0]: the ticket counter
    for p, row in enumerate(rows):
        oh, ow = pk.row_output_hw(row, h, w)
        keeps_grid.append((oh, ow) == (h, w))
        m_tiles = triton.cdiv(n * oh * ow, block_m)
        col_tiles = triton.cdiv(row[pk.COLS], block_n)
        parts = k_parts if row[pk.KIND] == pk.CONV else 1
        count_off = -1
        if p in produces:
            count_off, counters = counters, counters + m_tiles
        for q, whole in deps[p]:
            if not q < p:
                raise ValueError(f"problem {p} depends on problem {q}, which is not before it")
            dep_rows.append([q, int(whole or not keeps_grid[q])])
        schedule.append([tickets, m_tiles, col_tiles, count_off, len(dep_rows) - len(deps[p]), len(deps[p]),
                         parts, slots])
        tickets += m_tiles * col_tiles * parts
        slots += m_tiles * col_tiles if row[pk.KIND] == pk.CONV else 0
    return BlockSchedule(schedule, dep_rows or [[0, 0]], tickets, counters, slots)


def launch_block_tensors(
    kernel, num_programs, num_tickets, x, work, out, problems, weights, bias, col_dst, col_flags,
    schedule, deps, counters, scratch, counts, config, precision, has_conv=True, has_pool=True,
    has_residual=False, waits=None,
):
    """Launch `kernel` (the raw kernel, or wrap_triton(kernel) inside a triton_op) on
    `num_programs` programs for `num_tickets` tickets.

    x, work, out: NCHW-shaped tensors stored channels_last (NHWC in memory); `work` may be a
    small dummy when the block has no intermediates. problems ... col_flags: the block's packed
    table (`packing.PackedStage`); schedule, deps: `block_schedule`'s tables (int32 tensors);
    counters: int32, zero before the first launch (the kernel leaves them zero). config:
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, k_parts), the stage kernel's. With
    k_parts > 1, `scratch` (fp32, k_parts BLOCK_M x BLOCK_N tiles per slot) and `counts` (int32,
    one per slot, zero before the first launch; left zero) hold the partial sums. precision:
    "tf32" or "ieee" for fp32 dots. waits: int32, 3 * RECORD_DEPS per ticket, to record each
    ticket's waits into (tests; see the kernel)."""
    block_m, block_n, block_k, num_warps, num_stages, k_parts = config
    n, _, h, w = x.shape
    wide = max(x.numel(), work.numel(), out.numel()) >= 2**31
    split = k_parts > 1
    kernel[(num_programs,)](
        x, work, out, weights, bias, col_dst, col_flags, problems, schedule, deps, counters,
        scratch if split else bias, counts if split else counters, waits if waits is not None else counters,
        n, h, w, x.shape[1], work.shape[1], out.shape[1], problems.shape[0], num_tickets, num_programs,
        counters.numel(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, INPUT_PRECISION=precision,
        HAS_CONV=has_conv, HAS_POOL=has_pool, HAS_RESIDUAL=has_residual, WIDE_INDEX=wide, SPLIT_K=split,
        RECORD_WAITS=waits is not None, num_warps=num_warps, num_stages=num_stages,
    )


def split_k_buffers(slots: int, config, device):
    """Zeroed split-K scratch and per-slot counters (None, None when the config does not split)."""
    block_m, block_n, *_, k_parts = config
    if k_parts == 1:
        return None, None
    scratch = torch.empty(slots * k_parts * block_m * block_n, dtype=torch.float32, device=device)
    return scratch, torch.zeros(slots, dtype=torch.int32, device=device)


def programs_per_sm(config, element_size: int) -> int:
    """Two programs per SM where two fit (a program waiting at a stage boundary then leaves the
    SM another to run), else one: 4-warp tiles of at most 64 x 128 (fp32 accumulators in
    registers) whose pipeline buffers take at most ~100 KB of shared memory."""
    block_m, block_n, block_k, num_warps, num_stages, _ = config
    buffers = num_stages * (block_m + block_n) * block_k * element_size
    return 2 if num_warps <= 4 and block_m * block_n <= 64 * 128 and buffers <= 100 * 1024 else 1
