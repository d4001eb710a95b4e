"""One grouped launch per dependency stage: every conv and pool of the stage, bias + ReLU in the
epilogue, each column stored straight into its channel slice of the block output or the work
buffer. The launch reads a `packing.PackedStage` (see its docstring for the table format).

Each program takes one [BLOCK_M pixels x BLOCK_N columns] tile of one problem. Convolutions are
implicit GEMMs: M = output pixels, N = output channels, K = KH*KW*CIN walked as one flat loop
of (tap, channel block) steps so that the software pipeliner sees a single loop.
"""

from __future__ import annotations

# Only triton and torch-free modules: compile workers import this module without torch
# (`compile_worker`). The host side (grid, split-K buffers, launch) is `stage_launch`.
import triton
import triton.language as tl

from ... import packed_layout as pk
from .tf32 import round_to_tf32

# The table layout, as compile-time constants for the kernels.
_NUM_FIELDS = tl.constexpr(pk.NUM_FIELDS)
_KH = tl.constexpr(pk.KH)
_KW = tl.constexpr(pk.KW)
_STRIDE = tl.constexpr(pk.STRIDE)
_PAD_H = tl.constexpr(pk.PAD_H)
_PAD_W = tl.constexpr(pk.PAD_W)
_COLS = tl.constexpr(pk.COLS)
_FLAG_RELU = tl.constexpr(pk.FLAG_RELU)
_FLAG_TO_OUTPUT = tl.constexpr(pk.FLAG_TO_OUTPUT)
_FLAG_RESIDUAL = tl.constexpr(pk.FLAG_RESIDUAL)
_CEIL = tl.constexpr(pk.CEIL)
_KIND = tl.constexpr(pk.KIND)
_SRC_BUF = tl.constexpr(pk.SRC_BUF)
_SRC_C0 = tl.constexpr(pk.SRC_C0)
_CIN = tl.constexpr(pk.CIN)
_W_OFF = tl.constexpr(pk.W_OFF)
_COL_OFF = tl.constexpr(pk.COL_OFF)
_BUF_WORK = tl.constexpr(pk.BUF_WORK)
_BUF_OUTPUT = tl.constexpr(pk.BUF_OUTPUT)
_CONV = tl.constexpr(pk.CONV)
_MAX_POOL = tl.constexpr(pk.MAX_POOL)
_AVG_POOL_INCLUDE_PAD = tl.constexpr(pk.AVG_POOL_INCLUDE_PAD)


@triton.jit
def _times8(value):
    return (value // 8) * 8


@triton.jit
def _out_size(size, kernel, stride, pad, ceil):
    """`windows.out_size` (PyTorch's pooling rule); every operand is non-negative here."""
    out = (size + 2 * pad - kernel + tl.where(ceil, stride - 1, 0)) // stride + 1
    return tl.where(ceil & ((out - 1) * stride >= size + pad), out - 1, out)


@triton.jit
def _problem_geometry(prob_ptr, p, H, W, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    row = prob_ptr + p * _NUM_FIELDS
    kh = tl.load(row + _KH).to(tl.int32)
    kw = tl.load(row + _KW).to(tl.int32)
    stride = tl.load(row + _STRIDE).to(tl.int32)
    ph = tl.load(row + _PAD_H).to(tl.int32)
    pw = tl.load(row + _PAD_W).to(tl.int32)
    ceil = tl.load(row + _CEIL) != 0
    cols = _times8(tl.load(row + _COLS).to(tl.int32))
    oh = _out_size(H, kh, stride, ph, ceil)
    ow = _out_size(W, kw, stride, pw, ceil)
    tiles = tl.cdiv(N * oh * ow, BLOCK_M) * tl.cdiv(cols, BLOCK_N)
    return kh, kw, stride, ph, pw, cols, oh, ow, tiles


@triton.jit
def _epilogue_store(
    acc, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
    work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size,
    BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    """acc[BLOCK_M, BLOCK_N] fp32 -> (+bias, +block input on residual columns, ReLU per
    column) -> its destination slice. `rows` are the destination pixel indices (already in the
    index type). With TF32 dots the values are stored rounded to TF32, as the next conv reads
    them: the tensor cores would otherwise truncate them there.
    HAS_RESIDUAL: the stage has residual columns (the load is compiled out otherwise).
    `keeps_size`: the problem's output size is the input's, so output pixel = input pixel;
    residual columns of a problem where it is not (or that name a channel past the input)
    store NaN, never a wrong value (the packer refuses such stages before they get here)."""
    offs_n = col0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < cols
    bias = tl.load(bias_ptr + col_off + offs_n, mask=n_mask, other=0.0)
    flags = tl.max_constancy(tl.load(col_flags_ptr + col_off + offs_n, mask=n_mask, other=0), 8)
    # Channel counts and slice starts are multiples of 8, so each aligned group of 8 columns
    # lands on 8 contiguous channels of one destination: 16-byte stores.
    dst = tl.load(col_dst_ptr + col_off + offs_n, mask=n_mask, other=0)
    dst = tl.max_contiguous(tl.multiple_of(dst, 8), 8)
    value = acc + bias[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RESIDUAL:
        residual = tl.max_constancy((flags & _FLAG_RESIDUAL) != 0, 8)
        readable = residual & keeps_size & (dst < C_IN)
        skip = tl.load(x_ptr + rows[:, None] * C_IN + dst[None, :], mask=mask & readable[None, :], other=0.0)
        value += skip.to(tl.float32)
        value = tl.where((residual & ~readable)[None, :], float("nan"), value)
    relu = (flags & _FLAG_RELU) != 0
    # ReLU keeps NaN, as torch.relu does (a NaN from a refused residual must not turn into 0)
    value = tl.where(relu[None, :], tl.maximum(value, 0.0, propagate_nan=tl.PropagateNan.ALL), value)
    if INPUT_PRECISION == "tf32":
        value = round_to_tf32(value)
    value = value.to(out_ptr.dtype.element_ty)
    to_out = tl.max_constancy((flags & _FLAG_TO_OUTPUT) != 0, 8)
    tl.store(out_ptr + rows[:, None] * C_OUT + dst[None, :], value, mask=mask & to_out[None, :])
    tl.store(work_ptr + rows[:, None] * C_WORK + dst[None, :], value, mask=mask & ~to_out[None, :])


@triton.jit
def _gather_tap(src_ptr, src_stride, img, ih0, iw0, tap, kw, H, W, m_mask, c, c_mask, other,
                INDEX: tl.constexpr):
    """The [BLOCK_M pixels, channels c] slice of one window tap: pixels whose tap falls in
    the padding read `other`. Returns the values and which pixels were inside the image."""
    ih = ih0 + tap // kw
    iw = iw0 + tap % kw
    valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pix = ((img * H + ih) * W + iw).to(INDEX)
    v = tl.load(
        src_ptr + pix[:, None] * src_stride + c[None, :],
        mask=valid[:, None] & c_mask[None, :], other=other,
    )
    return v, valid


@triton.jit
def _conv_tile(
    src_ptr, src_stride, w_ptr, w_off, img, ih0, iw0, m_mask, col0, cols, cin, kh, kw, H, W,
    k_part, k_parts,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Implicit GEMM: K = KH*KW*CIN walked as one flat loop of (tap, channel block) steps, so
    the software pipeliner sees a single loop; out-of-image taps load zeros (padding).
    Split-K: this program sums part `k_part` of `k_parts` of the steps."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = col0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < cols
    k_row = kh * kw * cin
    w_cols = w_ptr + w_off + offs_n.to(INDEX)[None, :] * k_row
    k_blocks = tl.cdiv(cin, BLOCK_K)
    steps = kh * kw * k_blocks
    chunk = tl.cdiv(steps, k_parts)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(k_part * chunk, tl.minimum(steps, (k_part + 1) * chunk)):
        tap = step // k_blocks
        c = (step % k_blocks) * BLOCK_K + offs_k
        c_mask = c < cin
        a = _gather_tap(src_ptr, src_stride, img, ih0, iw0, tap, kw, H, W, m_mask, c, c_mask, 0.0, INDEX)[0]
        b = tl.load(
            w_cols + (tap * cin + c)[:, None],
            mask=c_mask[:, None] & n_mask[None, :], other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _pool_tile(
    src_ptr, src_stride, kind, img, ih0, iw0, m_mask, col0, cols, kh, kw, H, W,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """AVG_POOL (count_include_pad=False), AVG_POOL_INCLUDE_PAD or MAX_POOL over a kh x kw
    window, per channel; one accumulator live at a time keeps the registers for the conv path.
    Taps outside the input (padding, or past the end in ceil mode) read nothing."""
    # Small tiles unroll the taps to keep loads in flight. A large tile has enough loads per
    # tap already, and unrolling its tile 4x made LLVM take 5-6 s per such kernel variant (the
    # longest compile of a first call).
    UNROLL: tl.constexpr = 4 if BLOCK_M * BLOCK_N <= 8192 else 1
    c = col0 + tl.arange(0, BLOCK_N)
    c_mask = c < cols
    if kind == _MAX_POOL:
        acc = tl.full((BLOCK_M, BLOCK_N), float("-inf"), dtype=tl.float32)
        for tap in tl.range(0, kh * kw, loop_unroll_factor=UNROLL):
            v = _gather_tap(
                src_ptr, src_stride, img, ih0, iw0, tap, kw, H, W, m_mask, c, c_mask, float("-inf"), INDEX
            )[0]
            acc = tl.maximum(acc, v.to(tl.float32))
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        count = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for tap in tl.range(0, kh * kw, loop_unroll_factor=UNROLL):
            v, valid = _gather_tap(
                src_ptr, src_stride, img, ih0, iw0, tap, kw, H, W, m_mask, c, c_mask, 0.0, INDEX
            )
            acc += v.to(tl.float32)
            count += valid.to(tl.float32)
        # count_include_pad: padding taps count as zeros, every window divides by kh * kw
        count = tl.where(kind == _AVG_POOL_INCLUDE_PAD, (kh * kw).to(tl.float32), count)
        acc = acc / tl.maximum(count, 1.0)[:, None]
    return acc


@triton.jit
def _split_k_epilogue(
    acc, slot, k_part, k_parts, scratch_ptr, count_ptr, rows, m_mask, col0, cols, col_off,
    bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """Each part stores its fp32 partial tile in its own scratch slice; the part that arrives
    last (per-tile counter) sums the slices in part order, so results do not depend on
    arrival order, resets the counter for the next launch (CUDA graphs replay it) and runs
    the epilogue. Returns whether this part was that last one (the tile is then stored)."""
    tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    first = slot.to(tl.int64) * k_parts * (BLOCK_M * BLOCK_N)
    tl.store(scratch_ptr + first + k_part * (BLOCK_M * BLOCK_N) + tile, acc)
    tl.debug_barrier()  # every thread's partial is stored before the counter says so
    arrived = tl.atomic_add(count_ptr + slot, 1, sem="acq_rel")
    last = arrived == k_parts - 1
    if last:
        total = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for part in range(0, k_parts):  # .cg: read from L2, where the other parts' stores are
            total += tl.load(scratch_ptr + first + part * (BLOCK_M * BLOCK_N) + tile, cache_modifier=".cg")
        tl.store(count_ptr + slot, 0)
        _epilogue_store(
            total, rows, m_mask, col0, cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr,
            work_ptr, out_ptr, C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_N, INPUT_PRECISION,
            HAS_RESIDUAL,
        )
    return last


# Shapes stay runtime values (no recompilation per batch size, input size or problem count):
# the kernel is compiled once per tile config, dtype, problem kinds, index width and split.
@triton.jit(do_not_specialize=["N", "H", "W", "C_IN", "C_WORK", "C_OUT", "num_problems", "k_parts"])
def _stage_kernel(
    x_ptr, work_ptr, out_ptr,
    w_ptr, bias_ptr, col_dst_ptr, col_flags_ptr, prob_ptr, scratch_ptr, count_ptr,
    N, H, W, C_IN, C_WORK, C_OUT, num_problems, k_parts,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    HAS_CONV: tl.constexpr, HAS_POOL: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    WIDE_INDEX: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr = False,
):
    """HAS_CONV / HAS_POOL: which problem kinds the stage has (the other path is compiled
    out, which frees registers). HAS_RESIDUAL: some column adds the block input (its load is
    compiled out otherwise). WIDE_INDEX: int64 pixel offsets, needed once a buffer holds
    2^31 elements or more; int32 otherwise (fewer registers). SPLIT_K: each conv tile's K
    loop is shared by `k_parts` programs (small batches, where the tiles alone do not fill
    the card); pools are never split. PDL: launched with programmatic dependent launch
    (`programmatic_launch`): wait for the kernel before, then let the next one be scheduled."""
    if PDL:  # before any load: even the problem table may have just been written
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    INDEX: tl.constexpr = tl.int64 if WIDE_INDEX else tl.int32
    pid = tl.program_id(0)
    # Every pixel stride, channel offset and weight offset is a multiple of 8 elements (16
    # bytes). Writing them as (v // 8) * 8 proves it to the compiler's alignment analysis
    # (which ignores multiple_of hints on scalars), so loads, stores and async copies are
    # 16 bytes wide.
    C_IN = _times8(C_IN)
    C_WORK = _times8(C_WORK)
    C_OUT = _times8(C_OUT)
    parts = k_parts if SPLIT_K else 1

    # Which problem does this program work on? Walk the (few) rows, counting their programs
    # and, for the split-K scratch slots, the conv tiles before each problem.
    p_sel = 0
    local = pid
    slot_base = 0
    program_base = 0
    conv_tiles = 0
    for p in range(num_problems):
        tiles = _problem_geometry(prob_ptr, p, H, W, N, BLOCK_M, BLOCK_N)[8]
        is_conv = tl.load(prob_ptr + p * _NUM_FIELDS + _KIND) == _CONV
        programs = tl.where(is_conv, tiles * parts, tiles)
        inside = (pid >= program_base) & (pid < program_base + programs)
        p_sel = tl.where(inside, p, p_sel)
        local = tl.where(inside, pid - program_base, local)
        slot_base = tl.where(inside, conv_tiles, slot_base)
        program_base += programs
        conv_tiles += tl.where(is_conv, tiles, 0)

    row = prob_ptr + p_sel * _NUM_FIELDS
    kind = tl.load(row + _KIND).to(tl.int32)
    src_buf = tl.load(row + _SRC_BUF).to(tl.int32)
    src_c0 = _times8(tl.load(row + _SRC_C0))
    cin = _times8(tl.load(row + _CIN).to(tl.int32))
    w_off = _times8(tl.load(row + _W_OFF))
    col_off = _times8(tl.load(row + _COL_OFF))
    kh, kw, stride, ph, pw, cols, oh, ow, tiles = _problem_geometry(
        prob_ptr, p_sel, H, W, N, BLOCK_M, BLOCK_N
    )
    k_part = 0
    if SPLIT_K:
        if kind == _CONV:
            k_part = local % parts
            local = local // parts

    # Column tiles of one pixel tile run next to each other: its input rows stay in L2.
    n_col_tiles = tl.cdiv(cols, BLOCK_N)
    pid_m = local // n_col_tiles
    pid_n = local % n_col_tiles
    M = N * oh * ow
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
    keeps_size = (oh == H) & (ow == W)  # residual columns read the input at their own pixel

    if HAS_CONV:
        if kind == _CONV:
            acc = _conv_tile(
                src_ptr, src_stride, w_ptr, w_off, img, ih0, iw0, m_mask, col0, cols, cin, kh, kw,
                H, W, k_part, parts, INDEX, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION,
            )
            if SPLIT_K:
                _split_k_epilogue(
                    acc, slot_base + local, k_part, parts, scratch_ptr, count_ptr, rows, m_mask, col0,
                    cols, col_off, bias_ptr, col_dst_ptr, col_flags_ptr, work_ptr, out_ptr,
                    C_WORK, C_OUT, x_ptr, C_IN, keeps_size, BLOCK_M, BLOCK_N, INPUT_PRECISION,
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
