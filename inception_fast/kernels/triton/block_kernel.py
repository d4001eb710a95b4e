"""One persistent launch per block: every stage of a block plan in a single kernel, the tiles
of a later stage waiting, through counters in global memory, only for the tiles of earlier
stages whose output they read.

The launch reads one `packing.PackedStage` holding every problem of the block (the stages'
tables concatenated in stage order), plus a *schedule* built per input shape by
`block_launch.block_schedule`:

  schedule[P, SCHED_FIELDS] (int32), per problem:
    FIRST      the problem's first ticket (tickets number the tiles of all problems in table
               order, so every tile of stage s comes before any tile of stage s+1)
    M_TILES    its pixel tiles: cdiv(N*OH*OW, BLOCK_M)
    COL_TILES  its column tiles: cdiv(COLS, BLOCK_N)
    COUNT_OFF  where its per-pixel-tile counters start in `counters` (-1: no later problem
               reads it)
    DEP_START, DEP_COUNT   its rows in `deps`
    PARTS      tickets per tile: the split-K parts of a conv (consecutive tickets), 1 for pools
    SLOT_BASE  split-K: the block's conv tiles before this problem (its first scratch slot)
  deps[D, 2] (int32): (producer problem, WHOLE). WHOLE = 0: the consumer reads the producer's
    output through its window, so a consumer tile waits for the producer's pixel tiles that
    cover the source rows of its own pixels (+- the window); WHOLE = 1: it waits for every
    tile of the producer (used when the producer's pixel grid is not the consumer's source
    grid, or when the consumer overwrites what the producer reads).
  counters (int32, zero before the first launch): [0] the ticket counter, then one counter per
    pixel tile of each producer, counting its finished column tiles.

Each program takes tickets from the atomic ticket counter until they run out. A tile only
waits for tiles with smaller tickets, which were handed out before its own, to programs that
are running: the smallest unfinished ticket never waits, so no number of resident programs
can deadlock (there is no grid-wide barrier). A finished tile's stores are ordered before its
counter increment (CTA barrier, then a release atomic); a waiting tile reads counters with
acquire atomics, then a CTA barrier, before loading what the producer stored.

Counters reset themselves for the next launch (CUDA graphs replay the same buffers): every
program takes exactly one ticket past the last tile, and the program that takes the last of
those (ticket = tiles + programs - 1) is the only one still running, after every other
program finished every tile; it zeroes all counters.

The tiles themselves are the stage kernel's (`stage_kernel._conv_tile`, `_pool_tile`,
`_epilogue_store`, `_split_k_epilogue`), so a tile computes exactly what the stage kernel
computes with the same config. With split-K, the part that arrives last stores the tile and
signals its counter; the parts have consecutive tickets, all smaller than any consumer's.

This module holds the kernel alone (and the schedule's field indices) and imports triton and
torch-free modules only, for compile workers (`compile_worker`); `block_launch` builds the
schedule and launches the kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .stage_kernel import (
    _BUF_OUTPUT,
    _BUF_WORK,
    _CIN,
    _COL_OFF,
    _CONV,
    _KIND,
    _NUM_FIELDS,
    _SRC_BUF,
    _SRC_C0,
    _W_OFF,
    _conv_tile,
    _epilogue_store,
    _pool_tile,
    _problem_geometry,
    _split_k_epilogue,
    _times8,
)

FIRST, M_TILES, COL_TILES, COUNT_OFF, DEP_START, DEP_COUNT, PARTS, SLOT_BASE = range(8)
SCHED_FIELDS = 8
_SCHED_FIELDS = tl.constexpr(SCHED_FIELDS)
_FIRST = tl.constexpr(FIRST)
_M_TILES = tl.constexpr(M_TILES)
_COL_TILES = tl.constexpr(COL_TILES)
_COUNT_OFF = tl.constexpr(COUNT_OFF)
_DEP_START = tl.constexpr(DEP_START)
_DEP_COUNT = tl.constexpr(DEP_COUNT)
_PARTS = tl.constexpr(PARTS)
_SLOT_BASE = tl.constexpr(SLOT_BASE)
_RESET_BLOCK = tl.constexpr(1024)
_WAIT_BLOCK = tl.constexpr(16)  # counters read at once (a window rarely spans more pixel tiles)
RECORD_DEPS = 8  # dependencies per problem that RECORD_WAITS notes
_RECORD_DEPS = tl.constexpr(RECORD_DEPS)


@triton.jit
def _source_tiles(pid_m, M, oh, ow, stride, ph, kh, H, W, BLOCK_M: tl.constexpr):
    """The producer pixel tiles [first, last] holding every source pixel that output pixels
    [pid_m * BLOCK_M, (pid_m + 1) * BLOCK_M) of a window of kh rows read. Pixels are flattened
    (image, row, column), so the source rows from the first pixel's window top to the last
    pixel's window bottom, whole rows, bound them; rows are clamped to the image."""
    m_lo = pid_m * BLOCK_M
    m_hi = tl.minimum(m_lo + BLOCK_M, M) - 1
    per_image = oh * ow
    img_lo = m_lo // per_image
    img_hi = m_hi // per_image
    row_lo = ((m_lo % per_image) // ow) * stride - ph
    row_hi = ((m_hi % per_image) // ow) * stride - ph + kh - 1
    row_lo = tl.minimum(tl.maximum(row_lo, 0), H - 1)
    row_hi = tl.minimum(tl.maximum(row_hi, 0), H - 1)
    first = ((img_lo * H + row_lo) * W) // BLOCK_M
    last = ((img_hi * H + row_hi) * W + W - 1) // BLOCK_M
    return first, last


@triton.jit
def _wait_until_done(base, lo, hi, need, record_ptr, RECORD: tl.constexpr):
    """Spin until counters base[lo..hi] all reach `need`. One acquire load per counter, all in
    flight at once (spread over the threads): a tile pays about one L2 round trip per producer.
    RECORD (tests): also note the lowest and highest counter read and how many, at record_ptr."""
    for start in range(lo, hi + 1, _WAIT_BLOCK):
        offs = start + tl.arange(0, _WAIT_BLOCK)
        mask = offs <= hi
        done = tl.atomic_add(base + offs, 0, mask=mask, sem="acquire")
        short = tl.sum(tl.where(mask & (done < need), 1, 0), axis=0)
        while short > 0:
            done = tl.atomic_add(base + offs, 0, mask=mask, sem="acquire")
            short = tl.sum(tl.where(mask & (done < need), 1, 0), axis=0)
        if RECORD:
            tl.atomic_min(record_ptr, tl.min(tl.where(mask, offs, 2**30), axis=0))
            tl.atomic_max(record_ptr + 1, tl.max(tl.where(mask, offs, -1), axis=0))
            tl.atomic_add(record_ptr + 2, tl.sum(mask.to(tl.int32), axis=0))


@triton.jit
def _wait_for_producers(sched_ptr, deps_ptr, counters_ptr, p, first, last, record_ptr,
                        RECORD: tl.constexpr):
    """Spin until every producer tile this tile reads has all its column tiles finished.
    RECORD (tests): what each dependency's wait read, at record_ptr[3 * its index]."""
    row = sched_ptr + p * _SCHED_FIELDS
    dep_start = tl.load(row + _DEP_START)
    dep_count = tl.load(row + _DEP_COUNT)
    for d in range(dep_start, dep_start + dep_count):
        q = tl.load(deps_ptr + 2 * d)
        whole = tl.load(deps_ptr + 2 * d + 1) != 0
        q_row = sched_ptr + q * _SCHED_FIELDS
        q_tiles = tl.load(q_row + _M_TILES)
        lo = tl.where(whole, 0, tl.minimum(first, q_tiles - 1))
        hi = tl.where(whole, q_tiles - 1, tl.minimum(last, q_tiles - 1))
        _wait_until_done(counters_ptr + tl.load(q_row + _COUNT_OFF), lo, hi, tl.load(q_row + _COL_TILES),
                         record_ptr + 3 * (d - dep_start), RECORD)
    # The acquires were some threads'; the barrier orders every thread's loads after them.
    tl.debug_barrier()


# Shapes stay runtime values (no recompilation per batch size, input size or problem count).
@triton.jit(do_not_specialize=[
    "N", "H", "W", "C_IN", "C_WORK", "C_OUT", "num_problems", "num_tiles", "num_programs", "num_counters",
])
def _block_kernel(
    x_ptr, work_ptr, out_ptr,
    w_ptr, bias_ptr, col_dst_ptr, col_flags_ptr, prob_ptr, sched_ptr, deps_ptr, counters_ptr,
    scratch_ptr, count_ptr, waits_ptr,
    N, H, W, C_IN, C_WORK, C_OUT, num_problems, num_tiles, num_programs, num_counters,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    HAS_CONV: tl.constexpr, HAS_POOL: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    WIDE_INDEX: tl.constexpr, SPLIT_K: tl.constexpr, RECORD_WAITS: tl.constexpr,
):
    """HAS_CONV / HAS_POOL / HAS_RESIDUAL / WIDE_INDEX: as in the stage kernel, over the whole
    block. SPLIT_K: conv tiles come in PARTS tickets each, summed through `scratch_ptr` and
    `count_ptr` as in the stage kernel. RECORD_WAITS (tests): for each ticket and each of its
    dependencies (at most RECORD_DEPS), the lowest and highest producer pixel tile it waited
    for and how many, at waits_ptr[3 * (ticket * RECORD_DEPS + dependency)]."""
    INDEX: tl.constexpr = tl.int64 if WIDE_INDEX else tl.int32
    # Multiples of 8 elements, written so that the alignment analysis sees it (stage kernel).
    C_IN = _times8(C_IN)
    C_WORK = _times8(C_WORK)
    C_OUT = _times8(C_OUT)

    ticket = tl.atomic_add(counters_ptr, 1, sem="acq_rel")
    while ticket < num_tiles:
        p_sel = 0
        for p in range(1, num_problems):
            p_sel = tl.where(ticket >= tl.load(sched_ptr + p * _SCHED_FIELDS + _FIRST), p, p_sel)
        sched = sched_ptr + p_sel * _SCHED_FIELDS
        local = ticket - tl.load(sched + _FIRST)
        n_col_tiles = tl.load(sched + _COL_TILES)
        k_part = 0
        parts = 1
        if SPLIT_K:
            parts = tl.load(sched + _PARTS)
            k_part = local % parts
            local = local // parts
        # Column tiles of one pixel tile run next to each other: its input rows stay in L2,
        # and the pixel tile's counter completes early for the next stage.
        pid_m = local // n_col_tiles
        pid_n = local % n_col_tiles

        row = prob_ptr + p_sel * _NUM_FIELDS
        kind = tl.load(row + _KIND).to(tl.int32)
        src_buf = tl.load(row + _SRC_BUF).to(tl.int32)
        src_c0 = _times8(tl.load(row + _SRC_C0))
        cin = _times8(tl.load(row + _CIN).to(tl.int32))
        w_off = _times8(tl.load(row + _W_OFF))
        col_off = _times8(tl.load(row + _COL_OFF))
        kh, kw, stride, ph, pw, cols, oh, ow, _ = _problem_geometry(
            prob_ptr, p_sel, H, W, N, BLOCK_M, BLOCK_N
        )
        M = N * oh * ow

        first, last = _source_tiles(pid_m, M, oh, ow, stride, ph, kh, H, W, BLOCK_M)
        _wait_for_producers(sched_ptr, deps_ptr, counters_ptr, p_sel, first, last,
                            waits_ptr + 3 * _RECORD_DEPS * ticket, RECORD_WAITS)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        img = offs_m // (oh * ow)
        rem = offs_m % (oh * ow)
        ih0 = (rem // ow) * stride - ph
        iw0 = (rem % ow) * stride - pw
        # A select (not an if) keeps the pointers' alignment visible to the compiler.
        src_ptr = tl.where(src_buf == _BUF_WORK, work_ptr, tl.where(src_buf == _BUF_OUTPUT, out_ptr, x_ptr))
        src_stride = tl.where(src_buf == _BUF_WORK, C_WORK, tl.where(src_buf == _BUF_OUTPUT, C_OUT, C_IN))
        src_ptr = src_ptr + src_c0
        col0 = pid_n * BLOCK_N
        rows = offs_m.to(INDEX)
        keeps_size = (oh == H) & (ow == W)

        stored = ticket >= 0  # the tile is complete after this ticket (split-K: its last part)
        if HAS_CONV:
            if kind == _CONV:
                acc = _conv_tile(
                    src_ptr, src_stride, w_ptr, w_off, img, ih0, iw0, m_mask, col0, cols, cin, kh, kw,
                    H, W, k_part, parts, INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION,
                )
                if SPLIT_K:
                    stored = _split_k_epilogue(
                        acc, tl.load(sched + _SLOT_BASE) + local, k_part, parts, scratch_ptr, count_ptr,
                        rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr,
                        out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_M, BLOCK_N, INPUT_PRECISION,
                        HAS_RESIDUAL,
                    )
                else:
                    _epilogue_store(
                        acc, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
                        work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_N, INPUT_PRECISION,
                        HAS_RESIDUAL,
                    )
        if HAS_POOL:
            if kind != _CONV:
                acc = _pool_tile(
                    src_ptr, src_stride, kind, img, ih0, iw0, m_mask, col0, cols, kh, kw, H, W,
                    INDEX, BLOCK_M, BLOCK_N,
                )
                _epilogue_store(
                    acc, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
                    work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_N, INPUT_PRECISION,
                    HAS_RESIDUAL,
                )

        count_off = tl.load(sched + _COUNT_OFF)
        # Every thread's stores are issued before the one release that publishes them.
        tl.debug_barrier()
        if (count_off >= 0) & stored:
            tl.atomic_add(counters_ptr + count_off + pid_m, 1, sem="release")
        ticket = tl.atomic_add(counters_ptr, 1, sem="acq_rel")

    # Each program took one ticket past the tiles; whoever took the last of those runs alone
    # now (every other program has left the loop, every tile is done) and resets the counters.
    if ticket == num_tiles + num_programs - 1:
        for start in range(0, num_counters, _RESET_BLOCK):
            offs = start + tl.arange(0, _RESET_BLOCK)
            tl.store(counters_ptr + offs, 0, mask=offs < num_counters)
