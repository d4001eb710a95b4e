"""The conv problems of a stage read through tensor descriptors (TMA on Hopper): each K step's
operands are boxes that the copy engine brings into shared memory, several steps ahead of
the tensor cores, instead of per-row gathers that the warps issue themselves.

Four ways a stride-1 conv maps onto boxes (the stage kernel keeps every access a box cannot
express: strided convs, pools). Only GEMM and unmasked FLAT tiles feed the tensor cores from
shared memory directly; a masked or merged box takes a trip through registers first.

- GEMM (1x1, no padding): the source slice as a matrix [N*H*W pixels, CIN] (base pointer at
  the slice's first channel, row stride = the buffer's channels); pixel tiles run across
  images.
- FLAT (KHxKW, the default for wider windows): output tiles are BLOCK_M consecutive pixels of
  one image on a *virtual* grid of input width (row oh, column ow < W; columns >= OW are
  computed and dropped). Tap (dh, dw) is then one box of the per-image matrix
  [N, H*W, CIN] at row v0 + (dh - PAD_H)*W + (dw - PAD_W): rows above or below the image fall
  outside [0, H*W) and the copy engine fills them with zeros (the vertical padding). A
  horizontal shift wraps into the neighbouring row instead, so taps of a problem with
  PAD_W > 0 zero those rows in registers (TAP_MASK); for PAD_W = 0 a wrapped row only feeds a
  dropped column.
- BOX (BOX_W > 0): output tiles are BOX_H x BOX_W pixels of one image and tap (dh, dw) is
  one box of the 4-D tensor [N, H, W, CIN]; out-of-image rows and columns are zero-filled on
  both axes, no masks. Tiles waste work where the map is not a multiple of the box, and
  Triton (3.6) moves a box that merges two dimensions through registers to the tensor cores.
- ROWS (config `rows`, for windows that keep the size): pixel tiles run across images, as
  GEMM tiles do, and tap (dh, dw) is the box of [N*H*W, CIN] at row m0 + (dh - PAD_H)*W +
  (dw - PAD_W); rows whose tap leaves their image on either axis are zeroed in registers. No
  tile straddles a map edge wastefully (17x17 and 8x8 maps fill 128-pixel tiles), at the
  price of masking every off-centre tap.

Channels past CIN are outside the slice's descriptor and read as zeros, so a K step may run
past the end of a tap's channels: the weight box there holds the next tap's weights, which
multiply zeros. Weights are the OHWI matrix [COLS, KH*KW*CIN]; rows past COLS read zeros.

The grid is persistent: program i takes tiles i, i + G, i + 2G, ... of the stage's tile list
(every problem's tiles back to back), so all problems share one tail. Each program builds a
problem's descriptors once for all its tiles of that problem. Loads overlap MMAs through
Triton's software pipeline (num_stages boxes in flight, asynchronous wgmma); with FLATTEN
the tile loop and the K loop are one loop, so the next tile's first boxes load during this
tile's epilogue. (Triton 3.6 warp-specializes loops on Blackwell only.) Device-side descriptors live
in global scratch that Triton asks of the allocator set with `triton.set_allocator`
(`tma_conv.ensure_allocator`). Epilogue: `stage_kernel._epilogue_store` (bias, residual, ReLU,
TF32 rounding, 16-byte stores into each column's channel).

This module holds the kernel alone and imports triton and torch-free modules only, for compile
workers (`compile_worker`); `tma_conv` decides which stages and configs take it and launches it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ... import packed_layout as pk
from .stage_kernel import _epilogue_store, _times8

# The table layout, as compile-time constants for the kernel.
_NUM_FIELDS = tl.constexpr(pk.NUM_FIELDS)
_SRC_BUF = tl.constexpr(pk.SRC_BUF)
_SRC_C0 = tl.constexpr(pk.SRC_C0)
_CIN = tl.constexpr(pk.CIN)
_COLS = tl.constexpr(pk.COLS)
_KH = tl.constexpr(pk.KH)
_KW = tl.constexpr(pk.KW)
_PAD_H = tl.constexpr(pk.PAD_H)
_PAD_W = tl.constexpr(pk.PAD_W)
_W_OFF = tl.constexpr(pk.W_OFF)
_COL_OFF = tl.constexpr(pk.COL_OFF)
_BUF_WORK = tl.constexpr(pk.BUF_WORK)
_BUF_OUTPUT = tl.constexpr(pk.BUF_OUTPUT)


@triton.jit
def _first_tile(pid, programs, tile_base):
    """This program's first tile of a problem whose tiles start at global index `tile_base`:
    the first global index >= tile_base that is pid modulo the grid, relative to tile_base."""
    return (pid - tile_base % programs + programs) % programs


@triton.jit
def _gemm_tiles(
    base, src_stride, w_ptr, w_off, cin, cols, col_off, N, H, W, first, tiles, programs,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, FLATTEN: tl.constexpr,
):
    """1x1 conv, no padding: a GEMM over the source slice's pixel rows."""
    M = N * H * W
    a_desc = tl.make_tensor_descriptor(base, [M, cin], [src_stride, 1], [BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(w_ptr + w_off, [cols, cin], [cin, 1], [BLOCK_N, BLOCK_K])
    n_tiles = tl.cdiv(cols, BLOCK_N)
    for t in tl.range(first, tiles, programs, flatten=FLATTEN):
        m0 = (t // n_tiles) * BLOCK_M
        col0 = (t % n_tiles) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(cin, BLOCK_K)):
            a = a_desc.load([m0, k * BLOCK_K])
            b = b_desc.load([col0, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        _epilogue_store(
            acc, offs_m.to(INDEX), offs_m < M, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, True, BLOCK_N, INPUT_PRECISION, HAS_RESIDUAL,
        )


@triton.jit
def _flat_tiles(
    base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow, N, H, W,
    first, tiles, programs,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, MASK_ROWS: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    """KHxKW stride-1 conv on the virtual grid of input width (module docstring, FLAT).
    MASK_ROWS: zero the rows whose horizontal tap leaves the image (PAD_W > 0)."""
    k_row = kh * kw * cin
    a_desc = tl.make_tensor_descriptor(
        base, [N, H * W, cin], [H * W * src_stride, src_stride, 1], [1, BLOCK_M, BLOCK_K]
    )
    b_desc = tl.make_tensor_descriptor(w_ptr + w_off, [cols, k_row], [k_row, 1], [BLOCK_N, BLOCK_K])
    n_tiles = tl.cdiv(cols, BLOCK_N)
    per_image = tl.cdiv(oh * W, BLOCK_M)
    k_blocks = tl.cdiv(cin, BLOCK_K)
    steps = kh * kw * k_blocks
    keeps_size = (oh == H) & (ow == W)
    for t in tl.range(first, tiles, programs, flatten=FLATTEN):
        pid_m = t // n_tiles
        col0 = (t % n_tiles) * BLOCK_N
        img = pid_m // per_image
        v0 = (pid_m % per_image) * BLOCK_M
        offs_v = v0 + tl.arange(0, BLOCK_M)
        col_v = offs_v % W
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(0, steps):
            tap = step // k_blocks
            c0 = (step % k_blocks) * BLOCK_K
            dh = tap // kw
            dw = tap % kw
            a = a_desc.load([img, v0 + (dh - ph) * W + (dw - pw), c0]).reshape(BLOCK_M, BLOCK_K)
            if MASK_ROWS:
                iw = col_v + (dw - pw)
                a = tl.where(((iw >= 0) & (iw < W))[:, None], a, 0.0)
            b = b_desc.load([col0, tap * cin + c0])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        row_v = offs_v // W
        m_mask = (row_v < oh) & (col_v < ow)
        rows = (img * oh + row_v).to(INDEX) * ow + col_v
        _epilogue_store(
            acc, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_N, INPUT_PRECISION, HAS_RESIDUAL,
        )


@triton.jit
def _box_tiles(
    base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow, N, H, W,
    first, tiles, programs,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BOX_W: tl.constexpr, INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, FLATTEN: tl.constexpr,
):
    """KHxKW stride-1 conv with BOX_H x BOX_W output tiles (module docstring, BOX)."""
    BOX_H: tl.constexpr = BLOCK_M // BOX_W
    k_row = kh * kw * cin
    a_desc = tl.make_tensor_descriptor(
        base, [N, H, W, cin], [H * W * src_stride, W * src_stride, src_stride, 1], [1, BOX_H, BOX_W, BLOCK_K]
    )
    b_desc = tl.make_tensor_descriptor(w_ptr + w_off, [cols, k_row], [k_row, 1], [BLOCK_N, BLOCK_K])
    n_tiles = tl.cdiv(cols, BLOCK_N)
    tiles_w = tl.cdiv(ow, BOX_W)
    per_image = tl.cdiv(oh, BOX_H) * tiles_w
    k_blocks = tl.cdiv(cin, BLOCK_K)
    steps = kh * kw * k_blocks
    keeps_size = (oh == H) & (ow == W)
    for t in tl.range(first, tiles, programs, flatten=FLATTEN):
        pid_m = t // n_tiles
        col0 = (t % n_tiles) * BLOCK_N
        img = pid_m // per_image
        oh0 = ((pid_m % per_image) // tiles_w) * BOX_H
        ow0 = ((pid_m % per_image) % tiles_w) * BOX_W
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(0, steps):
            tap = step // k_blocks
            c0 = (step % k_blocks) * BLOCK_K
            dh = tap // kw
            dw = tap % kw
            a = a_desc.load([img, oh0 + dh - ph, ow0 + dw - pw, c0]).reshape(BLOCK_M, BLOCK_K)
            b = b_desc.load([col0, tap * cin + c0])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        i = tl.arange(0, BLOCK_M)
        row_o = oh0 + i // BOX_W
        col_o = ow0 + i % BOX_W
        m_mask = (row_o < oh) & (col_o < ow)
        rows = (img * oh + row_o).to(INDEX) * ow + col_o
        _epilogue_store(
            acc, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_N, INPUT_PRECISION, HAS_RESIDUAL,
        )


@triton.jit
def _rows_tiles(
    base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, N, H, W,
    first, tiles, programs,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, FLATTEN: tl.constexpr,
):
    """KHxKW stride-1 conv that keeps the size, pixel tiles across images (module docstring,
    ROWS): tap (dh, dw) is the box of the pixel matrix [N*H*W, CIN] at rows m0 + (dh - PAD_H)*W
    + (dw - PAD_W); rows whose tap leaves their image, on either axis, are zeroed."""
    M = N * H * W
    k_row = kh * kw * cin
    a_desc = tl.make_tensor_descriptor(base, [M, cin], [src_stride, 1], [BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(w_ptr + w_off, [cols, k_row], [k_row, 1], [BLOCK_N, BLOCK_K])
    n_tiles = tl.cdiv(cols, BLOCK_N)
    k_blocks = tl.cdiv(cin, BLOCK_K)
    steps = kh * kw * k_blocks
    for t in tl.range(first, tiles, programs, flatten=FLATTEN):
        m0 = (t // n_tiles) * BLOCK_M
        col0 = (t % n_tiles) * BLOCK_N
        offs_m = m0 + tl.arange(0, BLOCK_M)
        pixel = offs_m % (H * W)
        row_i = pixel // W
        col_i = pixel % W
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(0, steps):
            tap = step // k_blocks
            c0 = (step % k_blocks) * BLOCK_K
            dh = tap // kw
            dw = tap % kw
            a = a_desc.load([m0 + (dh - ph) * W + (dw - pw), c0])
            ih = row_i + (dh - ph)
            iw = col_i + (dw - pw)
            a = tl.where(((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None], a, 0.0)
            b = b_desc.load([col0, tap * cin + c0])
            acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)
        _epilogue_store(
            acc, offs_m.to(INDEX), offs_m < M, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, True, BLOCK_N, INPUT_PRECISION, HAS_RESIDUAL,
        )


@triton.jit
def _flat_or_masked_tiles(
    base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow, N, H, W,
    first, tiles, programs,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, TAP_MASK: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    """FLAT tiles; problems without horizontal padding take the unmasked copy of the K loop,
    whose operand goes from shared memory straight to the tensor cores. TAP_MASK: the masked
    copy is compiled in (some problem has PAD_W > 0)."""
    masked = False
    if TAP_MASK:
        masked = pw > 0
    if masked:
        _flat_tiles(
            base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow, N, H, W,
            first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr,
            C_WORK, C_OUT, x_ptr, C_IN, INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL,
            True, FLATTEN,
        )
    else:
        _flat_tiles(
            base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow, N, H, W,
            first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr,
            C_WORK, C_OUT, x_ptr, C_IN, INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL,
            False, FLATTEN,
        )


@triton.jit
def _problem_tiles(kh, kw, ph, pw, oh, ow, cols, N, H, W,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BOX_W: tl.constexpr, ROWS: tl.constexpr):
    """Output tiles of one problem, and whether they are GEMM / ROWS tiles over all pixels
    (`tma_conv.tma_tiles` is the host-side twin)."""
    n_tiles = tl.cdiv(cols, BLOCK_N)
    is_gemm = (kh == 1) & (kw == 1) & (ph == 0) & (pw == 0)
    is_rows = False
    if ROWS:
        is_rows = ~is_gemm & (oh == H) & (ow == W)
    if BOX_W > 0:
        per_image = tl.cdiv(oh, BLOCK_M // BOX_W) * tl.cdiv(ow, BOX_W)
    else:
        per_image = tl.cdiv(oh * W, BLOCK_M)
    m_tiles = tl.where(is_gemm | is_rows, tl.cdiv(N * H * W, BLOCK_M), N * per_image)
    return m_tiles * n_tiles, is_gemm, is_rows


# Shapes stay runtime values, as in the stage kernel: one compilation per config, dtype and
# the stage's kinds of problems.
@triton.jit(do_not_specialize=["N", "H", "W", "C_IN", "C_WORK", "C_OUT", "num_problems"])
def _tma_stage_kernel(
    x_ptr, work_ptr, out_ptr, w_ptr, bias_ptr, col_dst_ptr, col_flags_ptr, prob_ptr,
    N, H, W, C_IN, C_WORK, C_OUT, num_problems,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BOX_W: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, HAS_GEMM: tl.constexpr, HAS_TAPS: tl.constexpr,
    TAP_MASK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, WIDE_INDEX: tl.constexpr, FLATTEN: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Every problem of `prob_ptr` is a stride-1 conv (`tma_conv.row_reason` is None). HAS_GEMM /
    HAS_TAPS: the stage has 1x1 problems / wider windows (the other path is compiled out).
    TAP_MASK: some FLAT problem has PAD_W > 0 (its masked K loop is compiled in). BOX_W: 0 for
    FLAT tiles, else the box width of BOX tiles. ROWS (BOX_W = 0): windows that keep the size
    take ROWS tiles. WIDE_INDEX: int64 destination offsets.
    FLATTEN: fuse each tile loop with its K loop, so that the pipeliner loads the next tile's
    first K steps while this tile's last MMAs and its epilogue run."""
    INDEX: tl.constexpr = tl.int64 if WIDE_INDEX else tl.int32
    # Multiples of 8 elements (16 bytes), written so that the alignment analysis sees it
    # (see the stage kernel): 16-byte epilogue stores.
    C_IN = _times8(C_IN)
    C_WORK = _times8(C_WORK)
    C_OUT = _times8(C_OUT)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    tile_base = 0
    for p in range(num_problems):
        row = prob_ptr + p * _NUM_FIELDS
        src_buf = tl.load(row + _SRC_BUF).to(tl.int32)
        src_c0 = _times8(tl.load(row + _SRC_C0))
        cin = _times8(tl.load(row + _CIN).to(tl.int32))
        cols = _times8(tl.load(row + _COLS).to(tl.int32))
        kh = tl.load(row + _KH).to(tl.int32)
        kw = tl.load(row + _KW).to(tl.int32)
        ph = tl.load(row + _PAD_H).to(tl.int32)
        pw = tl.load(row + _PAD_W).to(tl.int32)
        w_off = _times8(tl.load(row + _W_OFF))
        col_off = _times8(tl.load(row + _COL_OFF))
        oh = H + 2 * ph - kh + 1
        ow = W + 2 * pw - kw + 1
        tiles, is_gemm, is_rows = _problem_tiles(
            kh, kw, ph, pw, oh, ow, cols, N, H, W, BLOCK_M, BLOCK_N, BOX_W, ROWS
        )
        first = _first_tile(pid, programs, tile_base)
        src_ptr = tl.where(src_buf == _BUF_WORK, work_ptr, tl.where(src_buf == _BUF_OUTPUT, out_ptr, x_ptr))
        src_stride = tl.where(src_buf == _BUF_WORK, C_WORK, tl.where(src_buf == _BUF_OUTPUT, C_OUT, C_IN))
        base = src_ptr + src_c0
        if HAS_GEMM:
            if is_gemm:
                _gemm_tiles(
                    base, src_stride, w_ptr, w_off, cin, cols, col_off, N, H, W, first, tiles, programs,
                    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
                    INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL, FLATTEN,
                )
        if HAS_TAPS:
            if not is_gemm:
                if BOX_W > 0:
                    _box_tiles(
                        base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow,
                        N, H, W, first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr,
                        work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
                        INDEX, BLOCK_M, BLOCK_N, BLOCK_K, BOX_W, INPUT_PRECISION, HAS_RESIDUAL, FLATTEN,
                    )
                elif ROWS:
                    if is_rows:
                        _rows_tiles(
                            base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, N, H, W,
                            first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr,
                            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
                            INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL, FLATTEN,
                        )
                    else:
                        _flat_or_masked_tiles(
                            base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow,
                            N, H, W, first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr,
                            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
                            INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL, TAP_MASK,
                            FLATTEN,
                        )
                else:
                    _flat_or_masked_tiles(
                        base, src_stride, w_ptr, w_off, cin, cols, col_off, kh, kw, ph, pw, oh, ow,
                        N, H, W, first, tiles, programs, bias_ptr, col_dst_ptr, col_flags_ptr,
                        work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN,
                        INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION, HAS_RESIDUAL, TAP_MASK, FLATTEN,
                    )
        tile_base += tiles
