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
(`ensure_allocator`). Epilogue: `stage_kernel._epilogue_store` (bias, residual, ReLU, TF32
rounding, 16-byte stores into each column's channel).
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ... import packing as pk
from ...graphs import outside_capture
from .launch_state import StageLaunchState, round_to_tf32
from .stage_kernel import _epilogue_store, _times8

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


# --- The kernel ---------------------------------------------------------------------------


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
    (`tma_tiles` is the host-side twin)."""
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
    """Every problem of `prob_ptr` is a stride-1 conv (`row_reason` is None). HAS_GEMM /
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


# --- Host side: which problems, which tiles, the launch -----------------------------------


class TmaConfig(NamedTuple):
    """A launch of the TMA kernel. box_w: 0 for FLAT tiles of windows wider than 1x1, else BOX
    tiles of (block_m // box_w) x box_w pixels. per_sm: persistent programs per SM. flatten:
    1 fuses the tile and K loops (the kernel's FLATTEN). rows: 1 gives windows that keep the
    size ROWS tiles across images (with box_w 0)."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 4
    box_w: int = 0
    per_sm: int = 1
    flatten: int = 1
    rows: int = 0

    def label(self) -> str:
        tiles = "rows" if self.rows else "flat"
        if self.box_w:
            tiles = f"box{self.block_m // self.box_w}x{self.box_w}"
        return (f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages} "
                f"{tiles} {self.per_sm}/SM{' fused-loops' if self.flatten else ''}")


ENV_MODE = "INCEPTION_FAST_TMA"  # 1: stages of TMA-expressible convs only; split: also mixed stages
ENV_CONFIG = "INCEPTION_FAST_TMA_CONFIG"  # block_m,block_n,block_k,warps,stages[,box_w,per_sm,flatten,rows]
MODES = ("1", "split")


def mode() -> str | None:
    """The TMA switch: None (off, the default), "1" or "split" (module docstring of the
    backend: where each applies)."""
    value = os.environ.get(ENV_MODE, "")
    if value in ("", "0"):
        return None
    if value not in MODES:
        raise ValueError(f"{ENV_MODE}={value!r}: use 1 (TMA for stages whose every problem is a "
                         "stride-1 conv), split (also the stride-1 convs of mixed stages) or 0 (off)")
    return value


def row_reason(row) -> str | None:
    """Why one packed problem cannot run on the TMA kernel (None if it can)."""
    if row[pk.KIND] != pk.CONV:
        return "a pool (the stage kernel's gather path runs pools)"
    if row[pk.STRIDE] != 1:
        return f"a stride-{row[pk.STRIDE]} conv (its taps are strided, not boxes)"
    if 2 * row[pk.PAD_H] >= row[pk.KH] or 2 * row[pk.PAD_W] >= row[pk.KW]:
        if row[pk.PAD_H] or row[pk.PAD_W]:
            return "padding of half the window or more (the output is larger than the input)"
    if row[pk.SRC_C0] % 8 or row[pk.CIN] % 8 or row[pk.COLS] % 8:
        return "channels not in multiples of 8 (descriptors need 16-byte aligned rows)"
    return None


def dtype_reason(dtype: torch.dtype, tf32: bool) -> str | None:
    if dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32):
        return None
    return f"{dtype} {'with TF32' if tf32 else 'with exact dots'} (the TMA kernel runs fp16, bf16 and TF32)"


def buffers_reason(*tensors: torch.Tensor) -> str | None:
    """Descriptors need 16-byte aligned bases and pixel strides."""
    for t in tensors:
        if t.data_ptr() % 16 or (t.shape[1] * t.element_size()) % 16:
            return "a buffer whose base or pixel stride is not a multiple of 16 bytes"
    return None


@dataclasses.dataclass
class TmaStage:
    """One stage as the TMA path runs it: `problems` (rows `rows`) on the TMA kernel, `rest` (a
    stage of the other rows, or None) on the stage kernel. Both read the whole stage's weights
    and column tables, so the rows keep their offsets."""

    stage: pk.PackedStage
    problems: torch.Tensor
    rows: list
    rest: pk.PackedStage | None
    has_gemm: bool
    has_taps: bool
    tap_mask: bool  # some wider window has PAD_W > 0 (FLAT tiles mask its wrapped rows)
    has_residual: bool
    rest_signature: str = ""  # `packing.stage_signature(rest)`: its tuning key
    rest_state: StageLaunchState | None = None  # the stage kernel's launch state for `rest`
    configs: dict = dataclasses.field(default_factory=dict)  # TmaConfig per input shape

    def kernel_flags(self, config: TmaConfig) -> tuple[bool, bool, bool, bool]:
        """(HAS_GEMM, HAS_TAPS, TAP_MASK, HAS_RESIDUAL) of the kernel for `config`: BOX tiles
        need no masked FLAT loop, and ROWS tiles leave it only the windows that shrink."""
        tap_mask = self.tap_mask and not config.box_w
        if config.rows:
            tap_mask = any(not _is_gemm(r) and r[pk.PAD_W] > 0 and not _keeps_size(r) for r in self.rows)
        return self.has_gemm, self.has_taps, tap_mask, self.has_residual


def _is_gemm(row) -> bool:
    return row[pk.KH] == row[pk.KW] == 1 and row[pk.PAD_H] == row[pk.PAD_W] == 0


def _keeps_size(row) -> bool:
    return row[pk.KH] == 2 * row[pk.PAD_H] + 1 and row[pk.KW] == 2 * row[pk.PAD_W] + 1


def plan_stage(stage: pk.PackedStage, allow_split: bool = False) -> TmaStage | None:
    """The TMA split of a stage: None when no problem can run on the TMA kernel, or when some
    cannot and `allow_split` is off (the stage stays one launch of the stage kernel)."""
    take = [p for p, row in enumerate(stage.rows) if row_reason(row) is None]
    if not take or (len(take) < len(stage.rows) and not allow_split):
        return None
    rows = [stage.rows[p] for p in take]
    device = stage.problems.device
    outside_capture(device, "planning a TMA stage")
    index = torch.tensor(take, dtype=torch.long, device=device)
    rest = None
    if len(take) < len(stage.rows):
        others = [p for p in range(len(stage.rows)) if p not in take]
        rest_rows = [stage.rows[p] for p in others]
        rest = dataclasses.replace(
            stage, problems=stage.problems[torch.tensor(others, dtype=torch.long, device=device)],
            rows=rest_rows, residual=_any_residual(stage, rest_rows),
        )
    return TmaStage(
        stage=stage,
        problems=stage.problems[index] if rest is not None else stage.problems,
        rows=rows,
        rest=rest,
        has_gemm=any(_is_gemm(r) for r in rows),
        has_taps=any(not _is_gemm(r) for r in rows),
        tap_mask=any(not _is_gemm(r) and r[pk.PAD_W] > 0 for r in rows),
        has_residual=_any_residual(stage, rows),
        rest_signature=pk.stage_signature(rest) if rest is not None else "",
        rest_state=StageLaunchState() if rest is not None else None,
    )


def _any_residual(stage: pk.PackedStage, rows) -> bool:
    if not stage.residual:
        return False
    flags = stage.col_flags.cpu()
    return any(
        bool((flags[r[pk.COL_OFF] : r[pk.COL_OFF] + r[pk.COLS]] & pk.FLAG_RESIDUAL).any()) for r in rows
    )


def tma_tiles(rows, n: int, h: int, w: int, config: TmaConfig) -> int:
    """Output tiles of the TMA rows (the kernel's `_problem_tiles`, host side)."""
    total = 0
    for row in rows:
        oh = h + 2 * row[pk.PAD_H] - row[pk.KH] + 1
        ow = w + 2 * row[pk.PAD_W] - row[pk.KW] + 1
        if _is_gemm(row) or (config.rows and not config.box_w and _keeps_size(row)):
            m_tiles = triton.cdiv(n * h * w, config.block_m)
        elif config.box_w:
            box_h = config.block_m // config.box_w
            m_tiles = n * triton.cdiv(oh, box_h) * triton.cdiv(ow, config.box_w)
        else:
            m_tiles = n * triton.cdiv(oh * w, config.block_m)
        total += m_tiles * triton.cdiv(row[pk.COLS], config.block_n)
    return total


def computed_fraction(rows, n: int, h: int, w: int, config: TmaConfig) -> float:
    """Useful output pixels over the pixels the tiles compute (columns aside): how much of the
    MMA work a tile shape wastes on a map size."""
    useful = computed = 0
    for row in rows:
        oh = h + 2 * row[pk.PAD_H] - row[pk.KH] + 1
        ow = w + 2 * row[pk.PAD_W] - row[pk.KW] + 1
        single = TmaConfig(**{**config._asdict(), "block_n": 1 << 30})
        useful += n * oh * ow
        computed += tma_tiles([row], n, h, w, single) * config.block_m
    return useful / max(computed, 1)


_SM_COUNT: dict = {}


def _programs(device: torch.device, tiles: int, per_sm: int) -> int:
    """The persistent grid: every SM busy, never more programs than tiles. On the CPU (the
    interpreter) a few programs, so that each takes several tiles."""
    if device.type != "cuda":
        return max(1, min(tiles, 3))
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return max(1, min(tiles, _SM_COUNT[index] * per_sm))


def _allocate_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for device-side descriptors (128 bytes each per program). From PyTorch's
    caching allocator: cheap per launch, and captured CUDA graphs keep it in their pool."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator() -> None:
    """Set our scratch allocator unless one is set in this context already (the allocator is
    a context variable: each thread starts without one)."""
    try:
        from triton.runtime import _allocation

        current = _allocation._allocator.get()
        if not isinstance(current, _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another Triton layout: set ours each time
        pass
    triton.set_allocator(_allocate_scratch)


def default_config(tma: TmaStage, element_size: int) -> TmaConfig:
    """Without timing: 128x128 tiles, K steps of 64 (32 where a step would be mostly zeros or
    the elements are 4 bytes), 4 stages; INCEPTION_FAST_TMA_CONFIG overrides it."""
    override = os.environ.get(ENV_CONFIG)
    if override:
        try:
            return TmaConfig(*(int(v) for v in override.split(",")))
        except (TypeError, ValueError):
            raise ValueError(
                f"{ENV_CONFIG}={override!r}: give block_m,block_n,block_k,num_warps,num_stages"
                "[,box_w[,per_sm[,flatten[,rows]]]] as integers, e.g. 128,128,64,8,4"
            ) from None
    min_cin = min(row[pk.CIN] for row in tma.rows)
    block_k = 32 if element_size >= 4 or min_cin <= 32 else 64
    return TmaConfig(block_k=block_k)


def check_config(config: TmaConfig) -> None:
    """Shapes the kernel can take (ValueError naming the field). A box row of block_k >= 16
    elements is at least the 16 bytes a descriptor needs."""
    for name in ("block_m", "block_n", "block_k"):
        value = getattr(config, name)
        if value < 16 or value & (value - 1) or value > 256:
            raise ValueError(f"{name} must be a power of two in [16, 256], got {value}")
    if config.box_w and (config.box_w & (config.box_w - 1) or config.block_m % config.box_w):
        raise ValueError(f"box_w={config.box_w} must be a power of two that divides block_m={config.block_m}")
    if config.per_sm < 1:
        raise ValueError(f"per_sm must be at least 1, got {config.per_sm}")
    if config.rows and config.box_w:
        raise ValueError("rows=1 (ROWS tiles) and box_w > 0 (BOX tiles) exclude each other")


def launch_tma_tensors(
    kernel, num_programs, x, work, out, problems, weights, bias, col_dst, col_flags, config, precision,
    has_gemm, has_taps, tap_mask, has_residual,
):
    """Launch `kernel` (the raw kernel, or wrap_triton(kernel) inside a triton_op) on
    `num_programs` persistent programs. x, work, out: NCHW shapes stored channels_last; config:
    a TmaConfig (or its tuple); the flags from `TmaStage.kernel_flags`."""
    config = TmaConfig(*config)
    n, _, h, w = x.shape
    if x.is_cuda:
        ensure_allocator()
    kernel[(num_programs,)](
        x, work, out, weights, bias, col_dst, col_flags, problems,
        n, h, w, x.shape[1], work.shape[1], out.shape[1], problems.shape[0],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, BOX_W=config.box_w,
        INPUT_PRECISION=precision, HAS_GEMM=has_gemm, HAS_TAPS=has_taps, TAP_MASK=tap_mask,
        HAS_RESIDUAL=has_residual, WIDE_INDEX=max(x.numel(), work.numel(), out.numel()) >= 2**31,
        FLATTEN=bool(config.flatten), ROWS=bool(config.rows),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def num_programs(tma: TmaStage, x: torch.Tensor, config: TmaConfig) -> int:
    """The persistent grid of one launch of `tma`'s rows on input `x`."""
    n, _, h, w = x.shape
    return _programs(x.device, tma_tiles(tma.rows, n, h, w, config), config.per_sm)


def launch_tma_stage(kernel, tma: TmaStage, x, work, out, config: TmaConfig, precision: str = "tf32"):
    """The TMA rows of one stage, launched directly (tests, the interpreter, benchmarks); the
    `rest` rows are the caller's. precision: "tf32" or "ieee" (fp32 only; fp16/bf16 ignore it).
    With TF32 the weights are rounded for this launch (the backend keeps its rounded copy)."""
    config = TmaConfig(*config)
    check_config(config)
    tf32 = precision == "tf32" and x.dtype == torch.float32
    weights = round_to_tf32(tma.stage.weights) if tf32 else tma.stage.weights
    launch_tma_tensors(
        kernel, num_programs(tma, x, config), x, work, out, tma.problems, weights,
        tma.stage.bias, tma.stage.col_dst, tma.stage.col_flags, config, precision,
        *tma.kernel_flags(config),
    )
