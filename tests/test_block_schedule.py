"""The host side of the persistent block kernel (`triton-block`): which ops a tile waits for
(`problem_dependencies`), the per-shape schedule and counters (`block_schedule`), and the whole
block packed as one table. No kernel runs here (see test_block_kernel_interpreter.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inception_fast import packing as pk
from inception_fast import reference as R
from inception_fast.backends.triton_block_backend import pack_whole_block, problem_dependencies
from inception_fast.kernels.triton.block_kernel import (
    COL_TILES,
    COUNT_OFF,
    DEP_COUNT,
    DEP_START,
    FIRST,
    M_TILES,
    PARTS,
    SLOT_BASE,
)
from inception_fast.kernels.triton.block_launch import block_schedule, programs_per_sm
from inception_fast.modules import fuse_block
from inception_fast.plan import INPUT, OUTPUT, WORK, BlockPlan, Conv, Slice, Write, op_destinations
from inception_fast.testing import randomize_batchnorm


def _overlaps(a, b):
    return a.buffer == b.buffer and a.start < b.stop and b.start < a.stop


@pytest.mark.parametrize("factory", [R.Mixed4a, R.InceptionA, R.ReductionA, R.InceptionB, R.ReductionB,
                                     R.InceptionC])
def test_each_op_waits_for_exactly_the_earlier_ops_that_write_what_it_reads(factory):
    plan = fuse_block(factory().eval()).plan
    staged = [(s, op) for s, stage in enumerate(plan.stages) for op in stage]
    deps = problem_dependencies(plan)
    assert len(deps) == len(staged)
    for c, (s, op) in enumerate(staged):
        writers = {q for q, (sq, producer) in enumerate(staged)
                   if sq < s and any(_overlaps(op.src, d) for d in op_destinations(producer))}
        assert {q for q, _ in deps[c]} == writers, (c, op)
        assert all(not whole for _, whole in deps[c])  # Inception-v4 never overwrites a slice
    assert any(deps)


def test_an_op_that_overwrites_what_an_earlier_op_reads_waits_for_all_of_it():
    def conv(src, dst):
        return Conv(("c",), src, (3, 3), (Write(dst),), padding=(1, 1))

    plan = BlockPlan("Reuse", 8, 8, 16, (
        (conv(Slice(INPUT, 0, 8), Slice(WORK, 0, 8)),),
        (conv(Slice(WORK, 0, 8), Slice(WORK, 8, 16)),),
        (conv(Slice(WORK, 8, 16), Slice(WORK, 0, 8)),),  # work[0:8] again: read by op 1, written by op 0
        (conv(Slice(WORK, 0, 8), Slice(OUTPUT, 0, 8)),),
    ))
    assert problem_dependencies(plan) == [[], [(0, False)], [(0, True), (1, True)], [(0, False), (2, False)]]


def _conv_row(cols, kernel=1, stride=1, pad=0, src_buf=pk.BUF_INPUT):
    return [pk.CONV, src_buf, 0, 16, cols, kernel, kernel, stride, pad, pad, 0, 0, 0]


def test_schedule_numbers_tiles_in_table_order_and_counts_only_producers():
    rows = [_conv_row(96), _conv_row(64, 3, 1, 1, pk.BUF_WORK), _conv_row(32, 3, 1, 1, pk.BUF_WORK)]
    deps = [[], [(0, False)], [(0, False), (1, False)]]
    schedule, dep_rows, tickets, counters, slots = block_schedule(rows, deps, 2, 9, 9, 64, 64)
    m_tiles = -(-2 * 9 * 9 // 64)  # 3
    assert [r[M_TILES] for r in schedule] == [m_tiles] * 3
    assert [r[COL_TILES] for r in schedule] == [2, 1, 1]
    assert [r[FIRST] for r in schedule] == [0, 6, 9] and tickets == 12
    # counters: [0] tickets, then one per pixel tile of each problem that a later one reads
    assert [r[COUNT_OFF] for r in schedule] == [1, 1 + m_tiles, -1] and counters == 1 + 2 * m_tiles
    assert [(r[DEP_START], r[DEP_COUNT]) for r in schedule] == [(0, 0), (0, 1), (1, 2)]
    assert dep_rows == [[0, 0], [0, 0], [1, 0]]
    assert [r[PARTS] for r in schedule] == [1, 1, 1] and slots == 12


def test_split_k_gives_conv_tiles_consecutive_tickets_and_scratch_slots():
    pool = [pk.MAX_POOL, pk.BUF_WORK, 0, 16, 16, 3, 3, 1, 1, 1, -1, 0, 0]
    rows = [_conv_row(96), pool, _conv_row(32, 3, 1, 1, pk.BUF_WORK)]
    deps = [[], [(0, False)], [(0, False)]]
    schedule, _, tickets, _, slots = block_schedule(rows, deps, 2, 9, 9, 64, 64, 4)
    assert [r[PARTS] for r in schedule] == [4, 1, 4]  # pools are never split
    assert [r[FIRST] for r in schedule] == [0, 24, 27] and tickets == 27 + 12
    assert [r[SLOT_BASE] for r in schedule] == [0, 6, 6] and slots == 9


def test_a_window_on_a_producer_of_another_size_waits_for_all_of_it():
    # A stride-2 producer's pixel grid is not the grid the consumer's window indexes.
    rows = [_conv_row(16, 3, 2, 0), _conv_row(16, 1, 1, 0, pk.BUF_OUTPUT)]
    dep_rows = block_schedule(rows, [[], [(0, False)]], 1, 9, 9, 16, 16)[1]
    assert dep_rows == [[0, 1]]
    assert block_schedule(rows, [[], []], 1, 9, 9, 16, 16)[1] == [[0, 0]]  # never empty
    with pytest.raises(ValueError, match="not before it"):
        block_schedule(rows, [[(1, False)], []], 1, 9, 9, 16, 16)


def test_whole_block_table_shifts_each_stage_offsets():
    torch.manual_seed(0)
    fused = fuse_block(randomize_batchnorm(R.InceptionB()).eval())
    packed = pack_whole_block(fused, "cpu", torch.float16)
    stages = pk.pack_block(fused, "cpu", torch.float16)
    assert len(packed.table.rows) == sum(len(s.rows) for s in stages) == len(fused.plan.ops)
    w_base = col_base = 0
    p = 0
    for stage in stages:
        for row in stage.rows:
            got = packed.table.rows[p]
            if row[pk.KIND] == pk.CONV:
                assert got[pk.W_OFF] == row[pk.W_OFF] + w_base
                n = row[pk.COLS] * row[pk.KH] * row[pk.KW] * row[pk.CIN]
                assert torch.equal(packed.table.weights[got[pk.W_OFF]: got[pk.W_OFF] + n],
                                   stage.weights[row[pk.W_OFF]: row[pk.W_OFF] + n])
            assert got[pk.COL_OFF] == row[pk.COL_OFF] + col_base
            cols = slice(got[pk.COL_OFF], got[pk.COL_OFF] + row[pk.COLS])
            own = slice(row[pk.COL_OFF], row[pk.COL_OFF] + row[pk.COLS])
            assert torch.equal(packed.table.col_dst[cols], stage.col_dst[own])
            assert torch.equal(packed.table.col_flags[cols], stage.col_flags[own])
            assert torch.equal(packed.table.bias[cols], stage.bias[own])
            p += 1
        w_base += stage.weights.numel()
        col_base += stage.bias.numel()
    assert torch.equal(packed.table.problems, torch.tensor(packed.table.rows))
    assert packed.kinds == (True, True, False)
    assert packed.signature.count("|") == len(stages) - 1


def test_whole_block_packing_refuses_what_the_kernels_cannot_run():
    block = nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU()).eval()  # 12 output channels: not 8-aligned
    with pytest.raises(ValueError, match="cannot run"):
        pack_whole_block(fuse_block(block), "cpu", torch.float16)


def test_two_programs_per_sm_only_where_two_fit():
    assert programs_per_sm((64, 64, 64, 4, 4, 1), 2) == 2
    assert programs_per_sm((128, 128, 64, 8, 3, 1), 2) == 1  # 8 warps, 96 KB of buffers
    assert programs_per_sm((128, 128, 32, 4, 3, 1), 4) == 1  # a 128 x 128 fp32 accumulator
