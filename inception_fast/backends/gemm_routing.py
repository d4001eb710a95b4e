"""Which packed problems the CUTLASS sm90 GEMM op `torch.ops.inception_fast.cuda_gemm_conv1x1`
(csrc/gemm_conv1x1*: TMA, WGMMA, a warp-specialized producer) computes, and its launches: shared
by the backends that pair the op with a stage kernel (`cuda-gemm`, `triton-gemm`).

A packed problem goes to the GEMM op when the op computes it exactly as a stage kernel would:
a 1x1 conv, stride 1, no padding, that reads the whole of its source buffer (channel 0 on, as
many channels as the buffer holds, the zero-padded channels of the block input included), so
the source is a plain [pixels, K] matrix. Its columns are cut into runs, each one GEMM launch:
columns going to consecutive channels of one buffer with the same flags (a stacked 1x1 problem,
one conv per branch, writes a run per branch). Every buffer it touches must hold a multiple of
8 channels and every run must start and span multiples of 8 channels and carry no residual
column (Inception-ResNet's residual epilogue is the stage kernels'); otherwise the whole problem
stays on the stage kernel.

The k x k conv op `torch.ops.inception_fast.cuda_conv_fprop` (csrc/conv_fprop*: CUTLASS's sm90
implicit GEMM, im2col TMA) can take the other convs, where a backend asks for it (`kxk`): any
window, stride and padding, reading channels [c0, c0 + C) of its source buffer, with the same
rules for channel counts, offsets and runs as the GEMM, in CTA tiles of 128 output pixels by 128,
96 or 64 output channels, or of 256 pixels by 128 or 96 (fp16 and bf16; INCEPTION_FAST_CUTLASS_CONV_TILE,
`conv_tile`).

Both ops can cut each output tile's K loop into ranges run by as many CTAs (split-K, fp16 and
bf16), where their tiles would leave most SMs idle (batch 1 and 2 of Inception-v4):
INCEPTION_FAST_CUTLASS_SPLIT_K=auto (`split_k_setting`, `split_k_count`). It is off by default:
on an H100 the convs it splits run 0.62-0.89x their time alone, but the network at batch 1 took
1.07x its time with it (see benchmarks/device/split_k_check.py).

Both ops take fp16, bf16, and fp32 on TF32 tensor cores (`tf32`, asked for explicitly): the
tensor cores read the top 19 bits of each operand, so the launches read weights rounded to TF32
and buffers that every writer stores rounded to TF32 (the ops' own epilogue, the Triton stage
kernel in TF32 mode, the input's layout copy), which is cuDNN's rounding of its TF32 inputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .. import packing as pk
from .. import side_streams
from ..kernels import launch_record
from . import cuda_backend  # the extension's loader and its reasons

ALIGN = 8  # channel counts and offsets: 16 bytes of fp16/bf16 (TMA's alignment), two such of fp32
# A block with a buffer this large stays whole on the stage kernel: the conv op indexes with 32
# bits, and the GEMM op (which limits rows, not elements) has not been checked past it on a GPU.
MAX_ELEMENTS = 2**31
DTYPES = (torch.float16, torch.bfloat16)  # and fp32 on TF32: `computes`
ENV_CONV_TILE = "INCEPTION_FAST_CUTLASS_CONV_TILE"
ENV_GEMM_TILE = "INCEPTION_FAST_CUTLASS_GEMM_TILE"
ENV_SPLIT_K = "INCEPTION_FAST_CUTLASS_SPLIT_K"
SPLIT_K_TILE = (128, 64)  # csrc/gemm_conv1x1.h: kSplitKTileM, kSplitKTileN
MAX_SPLITS = 8  # csrc/gemm_conv1x1.h: kMaxSplits
K_BLOCK_BYTES = 128  # the ops' K step: 64 fp16 / bf16 channels
# split_k_count's costs, in k-blocks of one CTA's K loop (about 0.3 us each at batch 1 on an H100):
# splitting at all (the cooperative kernel, the last range's wait, the stores of partials; about
# 2 us), and each range but the last (its slot, which the last range loads; about 0.8 us). Fitted
# on Inception-v4's k x k convs at batch 1 and 2 (benchmarks/device/split_k_check.py), set so
# that a split the fit finds within about 5% of none stays whole.
SPLIT_COST_K_BLOCKS = 8
RANGE_COST_K_BLOCKS = 3
# setting -> (tile_m, tile_n): output pixels and channels per CTA tile; 0: the op's model picks
# per conv. A bare width is a 128-row tile.
CONV_TILES = {"128": (128, 128), "96": (128, 96), "64": (128, 64), "64x64": (64, 64), "256x128": (256, 128),
              "256x96": (256, 96), "128xauto": (128, 0), "256xauto": (256, 0), "auto": (0, 0)}


def conv_tile() -> tuple[int, int]:
    """The k x k conv op's (tile_m, tile_n), from INCEPTION_FAST_CUTLASS_CONV_TILE: `auto` unless
    set (the op's model per conv), `128`, `96` or `64` (128-row tiles of that width), `64x64`,
    `256x128` or `256x96` (64- and 256-row tiles, fp16 and bf16 only), `128xauto` or `256xauto`
    (tiles of that height, the model's width)."""
    setting = os.environ.get(ENV_CONV_TILE, "auto")
    if setting not in CONV_TILES:
        raise ValueError(f"{ENV_CONV_TILE}={setting!r}: choose one of {', '.join(CONV_TILES)}")
    return CONV_TILES[setting]


# setting -> the GEMM op's tile_m: 0, the op's model (64 x 64 tiles where they fit one wave, else
# 128 rows of its width model); 128: 128-row tiles only; 64: 64 x 64 tiles (fp16 and bf16).
GEMM_TILES = {"auto": 0, "128": 128, "64x64": 64}


def gemm_tile() -> int:
    """The GEMM op's tile_m, from INCEPTION_FAST_CUTLASS_GEMM_TILE: `auto` unless set (the op's
    model per GEMM), `128` (128-row tiles, the model's width) or `64x64` (fp16 and bf16 only)."""
    setting = os.environ.get(ENV_GEMM_TILE, "auto")
    if setting not in GEMM_TILES:
        raise ValueError(f"{ENV_GEMM_TILE}={setting!r}: choose one of {', '.join(GEMM_TILES)}")
    return GEMM_TILES[setting]


def split_k_setting() -> int:
    """The ops' split-K, from INCEPTION_FAST_CUTLASS_SPLIT_K: `off` unless set (1: never), `auto`
    (0: split_k_count per launch), or a count of 2 to 8 (every fp16 / bf16 launch, for measuring)."""
    setting = os.environ.get(ENV_SPLIT_K, "off")
    if setting == "auto":
        return 0
    if setting == "off":
        return 1
    if setting.isdigit() and 2 <= int(setting) <= MAX_SPLITS:
        return int(setting)
    raise ValueError(f"{ENV_SPLIT_K}={setting!r}: choose auto, off, or a count of 2 to {MAX_SPLITS}")


def split_k_count(m: int, n: int, k_blocks: int, sm_count: int) -> int:
    """How many ranges to cut the K loop of an m x n GEMM (or a conv's implicit GEMM) into, 1 for
    none: only where its SPLIT_K_TILE output tiles would keep fewer than a quarter of `sm_count`
    SMs busy, and then the count, up to MAX_SPLITS and one wave of tiles times ranges, that
    costs least: the longest range's k-blocks plus SPLIT_COST_K_BLOCKS and RANGE_COST_K_BLOCKS
    per range but the last. `k_blocks`: the K loop in K_BLOCK_BYTES blocks (a conv's
    ceil(C / 64) * R * S in fp16). `sm_count` is the launch's planned share, never the SMs it
    gets in one call: a share of the GPU computes the same bits."""
    tiles = -(-m // SPLIT_K_TILE[0]) * -(-n // SPLIT_K_TILE[1])
    if sm_count <= 0 or tiles * 4 > sm_count:
        return 1

    def cost(splits: int) -> int:
        extra = SPLIT_COST_K_BLOCKS + RANGE_COST_K_BLOCKS * (splits - 1) if splits > 1 else 0
        return -(-k_blocks // splits) + extra

    return min(range(1, min(MAX_SPLITS, sm_count // tiles, k_blocks) + 1), key=cost)


def _counted_splits(launch, m: int, k_blocks: int) -> int:
    """split_k_count of a launch in `auto` for m rows, on its planned share (the small-stage share
    where it has one, which runs one after another on every SM or side by side in its share: the
    same count either way), kept per m."""
    count = launch.splits_by_rows.get(m)
    if count is None:
        sms = launch.small_stage_sm_limit or launch.sm_count
        count = launch.splits_by_rows[m] = split_k_count(m, launch.weight.shape[0], k_blocks, sms)
    return count


def computes(dtype: torch.dtype, tf32: bool) -> bool:
    """Whether the ops compute activations of `dtype`; fp32 only with TF32 dots (`tf32`)."""
    return dtype in DTYPES or (dtype == torch.float32 and tf32)


@dataclass(frozen=True)
class ColumnRun:
    """Columns [start, start + count) of a problem (relative to its first column), written to
    channels [dst_channel, dst_channel + count) of one buffer with the same flags."""

    start: int
    count: int
    dst_channel: int
    flags: int

    @property
    def buffer(self) -> int:
        return pk.BUF_OUTPUT if self.flags & pk.FLAG_TO_OUTPUT else pk.BUF_WORK


@dataclass
class GemmLaunch:
    """One call of the GEMM op: views into the packed stage, made once per block, device, dtype."""

    src: int  # pk.BUF_INPUT / BUF_WORK / BUF_OUTPUT
    dst: int  # pk.BUF_WORK / BUF_OUTPUT
    col_offset: int
    relu: bool
    weight: torch.Tensor  # [N, K] rows of the stage's weights (fp32: rounded to TF32)
    bias: torch.Tensor  # fp32 [N] of the stage's bias
    tf32: bool = False  # fp32 on TF32 tensor cores
    sm_limit: int = 0  # SMs its persistent CTAs may occupy in a large stage (0: all; share_sms)
    small_stage_sm_limit: int = 0  # the same in a small stage (stage_is_small)
    split_k: int = 1  # split_k_setting(): 1 for none, 0 for split_k_count, or a count
    sm_count: int = 0  # the GPU's SMs (share_sms; 0: not planned, no split-K)
    splits_by_rows: dict = field(default_factory=dict)  # m -> split_k_count
    tile_m: int = 0  # 64, 128, or 0: the op picks

    def splits(self, buffers: dict) -> int:
        """The op's split_k on `buffers`: its setting (none for TF32), else split_k_count where
        the op picks the tile."""
        if self.split_k or self.tf32 or self.tile_m:
            return self.split_k or 1
        src = buffers[self.src]
        k_blocks = -(-self.weight.shape[1] * self.weight.element_size() // K_BLOCK_BYTES)
        return _counted_splits(self, src.numel() // src.shape[-1], k_blocks)

    @property
    def work(self) -> int:
        """Multiply-adds per pixel of the stage's input."""
        return self.weight.numel()

    def run(self, buffers: dict, small_stage: bool = False, side_by_side: bool = True) -> None:
        """`small_stage`: with the small-stage share; `side_by_side` False: on every SM (its
        stage's launches run one after another)."""
        op = torch.ops.inception_fast.cuda_gemm_conv1x1.default  # looked up per call: tests count it
        limit = (self.small_stage_sm_limit if small_stage else self.sm_limit) if side_by_side else 0
        op(buffers[self.src], self.weight, self.bias, buffers[self.dst], self.col_offset, self.relu, 0,
           self.tf32, limit, self.splits(buffers), self.tile_m)


@dataclass
class ConvLaunch:
    """One call of the k x k conv op: channels [in_c0, in_c0 + C) of `src` into channels
    [out_c0, out_c0 + K) of `dst`; views into the packed stage."""

    src: int
    dst: int
    in_c0: int
    out_c0: int
    relu: bool
    weight: torch.Tensor  # [K, R, S, C] rows of the stage's (OHWI) weights (fp32: rounded to TF32)
    bias: torch.Tensor  # fp32 [K]
    stride: int
    pad_h: int
    pad_w: int
    tile_n: int  # 64, 96, 128, or 0: the op picks
    tf32: bool = False  # fp32 on TF32 tensor cores
    tile_m: int = 0  # 128, 256, or 0: the op picks
    split_k: int = 1  # split_k_setting(): 1, 0 for split_k_count (where the op picks the tile), n
    small_stage_sm_limit: int = 0  # SMs its persistent CTAs may occupy in a small stage (0: all)
    sm_count: int = 0  # the GPU's SMs (share_sms; 0: not planned, no split-K)
    splits_by_rows: dict = field(default_factory=dict)  # m -> split_k_count

    def splits(self, buffers: dict) -> int:
        """The op's split_k on `buffers`: its setting (none for TF32), else split_k_count where
        the op picks the tile."""
        if self.split_k or self.tf32 or self.tile_m or self.tile_n:
            return self.split_k or 1
        dst = buffers[self.dst]
        _, r, s, c = self.weight.shape
        k_blocks = -(-c * self.weight.element_size() // K_BLOCK_BYTES) * r * s
        return _counted_splits(self, dst.numel() // dst.shape[-1], k_blocks)

    @property
    def work(self) -> int:
        """Multiply-adds per pixel of the stage's input."""
        return self.weight.numel() // self.stride**2

    def run(self, buffers: dict, small_stage: bool = False, side_by_side: bool = True) -> None:
        """`small_stage` (side by side): with the small-stage share; else on every SM."""
        op = torch.ops.inception_fast.cuda_conv_fprop.default  # looked up per call: tests count it
        op(buffers[self.src], self.weight, self.bias, buffers[self.dst], self.in_c0, self.out_c0, self.stride,
           self.pad_h, self.pad_w, self.relu, self.tile_n, self.tf32,
           self.small_stage_sm_limit if small_stage and side_by_side else 0, self.tile_m,
           self.splits(buffers))


@dataclass
class RowSplit:
    """A packed stage split: the launches of the `taken` rows (GemmLaunch / ConvLaunch, in row
    order), and the stage of the `others` for a stage kernel (None when the ops take every row)."""

    taken: list
    launches: list
    others: list
    rest: pk.PackedStage | None


def column_runs(row, col_dst: list, col_flags: list) -> list[ColumnRun]:
    """The runs of a problem's columns: consecutive destination channels, one set of flags."""
    runs: list[ColumnRun] = []
    first, cols = row[pk.COL_OFF], row[pk.COLS]
    start = 0
    for j in range(1, cols + 1):  # plain ints: a first call splits thousands of columns
        c = first + j
        if j == cols or col_flags[c] != col_flags[c - 1] or col_dst[c] != col_dst[c - 1] + 1:
            runs.append(ColumnRun(start, j - start, col_dst[first + start], col_flags[first + start]))
            start = j
    return runs


def row_reason(row, col_dst: list, col_flags: list, buffer_channels: dict) -> str | None:
    """Why the GEMM op cannot compute packed problem `row` exactly (None: it can).
    `buffer_channels`: channels of each buffer as the kernels see them (pk.BUF_* -> count; the
    block input's after padding)."""
    if row[pk.KIND] != pk.CONV:
        return "a pool"
    if (row[pk.KH], row[pk.KW], row[pk.STRIDE], row[pk.PAD_H], row[pk.PAD_W]) != (1, 1, 1, 0, 0):
        return "not a 1x1 conv with stride 1 and no padding"
    if row[pk.SRC_C0] != 0 or row[pk.CIN] != buffer_channels[row[pk.SRC_BUF]]:
        return "reads a slice of its source buffer, not all of it"
    if row[pk.CIN] % ALIGN:
        return f"reads {row[pk.CIN]} channels, not a multiple of {ALIGN}"
    return _runs_reason(row, col_dst, col_flags, buffer_channels)


def conv_row_reason(row, col_dst: list, col_flags: list, buffer_channels: dict) -> str | None:
    """Why the k x k conv op cannot compute packed problem `row` exactly (None: it can)."""
    if row[pk.KIND] != pk.CONV:
        return "a pool"
    c0, cin, source = row[pk.SRC_C0], row[pk.CIN], buffer_channels[row[pk.SRC_BUF]]
    if c0 % ALIGN or cin % ALIGN or source % ALIGN:
        return f"reads channels {c0}:{c0 + cin} of {source}, not multiples of {ALIGN}"
    if row[pk.PAD_H] >= row[pk.KH] or row[pk.PAD_W] >= row[pk.KW]:
        return "pads as wide as its window"
    return _runs_reason(row, col_dst, col_flags, buffer_channels)


def _runs_reason(row, col_dst: list, col_flags: list, buffer_channels: dict) -> str | None:
    for run in column_runs(row, col_dst, col_flags):
        if run.flags & pk.FLAG_RESIDUAL:
            return "adds the residual in its epilogue"
        if run.dst_channel % ALIGN or run.count % ALIGN:
            stop = run.dst_channel + run.count
            return f"writes channels {run.dst_channel}:{stop}, not multiples of {ALIGN}"
        if buffer_channels[run.buffer] % ALIGN:
            return f"writes a buffer of {buffer_channels[run.buffer]} channels, not a multiple of {ALIGN}"
    return None


def split_rows(
    packed: pk.PackedStage, buffer_channels: dict, kxk: bool = False, tf32_weights: torch.Tensor | None = None
) -> RowSplit:
    """The launches of a packed stage on the GEMM op (and, with `kxk`, the k x k conv op), and
    a packed stage of the rows left for a stage kernel (they keep their weight and column
    offsets into the whole stage's tables). `tf32_weights`: fp32 on TF32 tensor cores, reading
    these, the stage's weights rounded to TF32 (`StageLaunchState.weights_for`, the one copy
    the stage kernel reads too); None: the stage's own weights, in their dtype."""
    col_dst, col_flags = packed.col_dst.tolist(), packed.col_flags.tolist()
    tf32 = tf32_weights is not None
    weights = tf32_weights if tf32 else packed.weights
    taken, launches = [], []
    for p, row in enumerate(packed.rows):
        if row_reason(row, col_dst, col_flags, buffer_channels) is None:
            launches += _gemm_launches(packed, weights, row, col_dst, col_flags, tf32)
        elif kxk and conv_row_reason(row, col_dst, col_flags, buffer_channels) is None:
            launches += _conv_launches(packed, weights, row, col_dst, col_flags, tf32)
        else:
            continue
        taken.append(p)
    others = [p for p in range(len(packed.rows)) if p not in taken]
    rest = packed
    if taken and others:
        rows = [packed.rows[p] for p in others]
        residual = any(col_flags[j] & pk.FLAG_RESIDUAL for r in rows
                       for j in range(r[pk.COL_OFF], r[pk.COL_OFF] + r[pk.COLS]))
        rest = dataclasses.replace(packed, problems=packed.problems[others], rows=rows, residual=residual)
    elif taken:
        rest = None
    return RowSplit(taken, launches, others, rest)


def _run_params(packed, weights, row, run: ColumnRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight rows ([count, KH * KW * CIN], OHWI) and the fp32 bias of one column run: views
    into `weights` (the packed stage's, or their TF32 copy) and the packed stage's bias."""
    k = row[pk.KH] * row[pk.KW] * row[pk.CIN]  # one output channel's weights
    w0 = row[pk.W_OFF] + run.start * k
    b0 = row[pk.COL_OFF] + run.start
    return weights[w0:w0 + run.count * k].view(run.count, k), packed.bias[b0:b0 + run.count]


def _checked_split_k(tf32: bool, tile: tuple = (0, 0), tile_fix: str = f"{ENV_CONV_TILE} to auto or 64",
                     ) -> int:
    """The split-K setting, refused for TF32 and for a tile other than the split-K tile (`tile_fix`:
    the setting that mends it)."""
    split_k = split_k_setting()
    if split_k > 1 and (tf32 or tile not in ((0, 0), (128, 64))):
        fix = "fp32 on TF32 has no split-K kernel" if tf32 else f"set {tile_fix}"
        raise ValueError(f"{ENV_SPLIT_K}={split_k}: split-K runs fp16 and bf16 launches in 128 x 64 tiles; "
                         f"{fix}, or set {ENV_SPLIT_K} to auto or off")
    return split_k


def _gemm_launches(packed, weights, row, col_dst, col_flags, tf32) -> list[GemmLaunch]:
    tile_m = gemm_tile()
    split_k = _checked_split_k(tf32, (0, 0) if tile_m != 64 else (64, 64), f"{ENV_GEMM_TILE} to auto or 128")
    if tile_m == 64 and tf32:
        raise ValueError(f"{ENV_GEMM_TILE}='64x64': 64-row tiles are built for fp16 and bf16, not fp32 on "
                         "TF32; use auto or 128")
    launches = []
    for run in column_runs(row, col_dst, col_flags):
        weight, bias = _run_params(packed, weights, row, run)
        launches.append(GemmLaunch(
            src=row[pk.SRC_BUF], dst=run.buffer, col_offset=run.dst_channel,
            relu=bool(run.flags & pk.FLAG_RELU), weight=weight, bias=bias, tf32=tf32, split_k=split_k,
            tile_m=tile_m,
        ))
    return launches


def _conv_launches(packed, weights, row, col_dst, col_flags, tf32) -> list[ConvLaunch]:
    tile_m, tile_n = conv_tile()
    split_k = _checked_split_k(tf32, (tile_m, tile_n))
    if tile_m in (64, 256) and tf32:
        setting = os.environ.get(ENV_CONV_TILE)
        raise ValueError(f"{ENV_CONV_TILE}={setting!r}: {tile_m}-row tiles are built for fp16 and bf16, not "
                         "fp32 on TF32; use auto, 128, 96 or 64")
    launches = []
    for run in column_runs(row, col_dst, col_flags):
        weight, bias = _run_params(packed, weights, row, run)
        launches.append(ConvLaunch(
            src=row[pk.SRC_BUF], dst=run.buffer, in_c0=row[pk.SRC_C0], out_c0=run.dst_channel,
            relu=bool(run.flags & pk.FLAG_RELU),
            weight=weight.view(run.count, row[pk.KH], row[pk.KW], row[pk.CIN]), bias=bias,
            stride=row[pk.STRIDE], pad_h=row[pk.PAD_H], pad_w=row[pk.PAD_W], tile_n=tile_n, tf32=tf32,
            tile_m=tile_m, split_k=split_k,
        ))
    return launches


# A stage is small where none of its launches makes more than this many waves of 128 x 128
# output tiles over the SMs alone: each would leave SMs idle for much of its time (its one
# wave, or its last), so every launch gets a share and they fill the GPU together. Where one
# launch is larger, its share would hold it back after the others finish. On an H100 (fp16,
# Inception-v4, triton-gemm), against shares among one source's GEMMs only:
# - shares among every launch of any stage: 0.96x / 0.99x the network's time at batch 8 / 32,
#   1.02x at batch 256 (ReductionA's 3x3/2 conv beside its 1x1 GEMM 1.18x, Mixed4a 1.04x);
# - up to 2 waves per launch: 0.96x / 0.98x at batch 8 / 32, 1.004x at batch 256 (InceptionC's
#   256-wide convs, 1.94 waves each: hence 1.9) and 1.009x at batch 1;
# - also asking for more than one wave together lost batch 8's gain (1.01x).
SMALL_STAGE_WAVES = 1.9


def share_sms(launches: list, sm_count: int) -> None:
    """Set the SM limits of one stage's launches, which run side by side (side_streams.sm_shares:
    shares by work, 0 for every SM). In a large stage, the GEMM launches that read the same
    buffer (the runs of a stacked 1x1 conv, each reading the whole of it) share the `sm_count`
    SMs, so that they run at once and read it from DRAM about once; any other launch keeps
    every SM. On an H100 (fp16, Inception-v4, triton-gemm) this took InceptionA 0.95x and
    InceptionB 0.96x their time at batch 256. In a small stage (stage_is_small) every launch
    gets a share: none fills the GPU alone, so they run at once instead of one after another
    (inside a CUDA graph only: `triton_gemm_backend.run_block`)."""
    groups: dict = {}
    for launch in launches:
        launch.sm_count = sm_count
        if isinstance(launch, GemmLaunch):
            launch.sm_limit = 0
            groups.setdefault(launch.src, []).append(launch)
    for group in groups.values():
        for launch, share in zip(group, side_streams.sm_shares([launch.work for launch in group], sm_count)):
            launch.sm_limit = share
    whole_stage = side_streams.sm_shares([launch.work for launch in launches], sm_count)
    for launch, share in zip(launches, whole_stage):
        launch.small_stage_sm_limit = share


def stage_is_small(launches: list, buffers: dict, sm_count: int) -> bool:
    """Whether none of a stage's launches on `buffers` makes more than SMALL_STAGE_WAVES waves of
    128 x 128 output tiles over `sm_count` SMs (never on a CPU: 0 SMs)."""
    for launch in launches:
        out = buffers[launch.dst]
        tiles = -(-(out.numel() // out.shape[-1]) // 128) * -(-launch.weight.shape[0] // 128)
        if tiles > SMALL_STAGE_WAVES * sm_count:
            return False
    return sm_count > 0


# One launch's row in `cuda_op_launches`' params, in csrc/bindings.cpp's order (LaunchField).
LAUNCH_FIELDS = ("kind", "src", "dst", "in_c0", "out_c0", "stride", "pad_h", "pad_w", "relu", "tile_n",
                 "tile_m", "tf32", "split_k")
LAUNCH_GEMM, LAUNCH_CONV = 0, 1
ENV_OP_GROUPS = "INCEPTION_FAST_OP_GROUPS"


@dataclass(frozen=True)
class LaunchTable:
    """A stage's op launches as the op `cuda_op_launches` takes them: a weight, a bias and a row of
    LAUNCH_FIELDS each, made once per stage; the split_k field is filled per call."""

    weights: list
    biases: list
    params: list

    def with_splits(self, splits: list) -> list:
        """The params with each launch's split_k."""
        params, fields, at = list(self.params), len(LAUNCH_FIELDS), LAUNCH_FIELDS.index("split_k")
        for i, split_k in enumerate(splits):
            params[i * fields + at] = split_k
        return params


def launch_table(launches: list) -> LaunchTable:
    params = []
    for launch in launches:
        if isinstance(launch, GemmLaunch):
            row = dict(kind=LAUNCH_GEMM, in_c0=0, out_c0=launch.col_offset, stride=1, pad_h=0, pad_w=0,
                       tile_n=0, tile_m=launch.tile_m, split_k=0)
        else:
            row = dict(kind=LAUNCH_CONV, in_c0=launch.in_c0, out_c0=launch.out_c0, stride=launch.stride,
                       pad_h=launch.pad_h, pad_w=launch.pad_w, tile_n=launch.tile_n, tile_m=launch.tile_m,
                       split_k=0)
        row.update(src=launch.src, dst=launch.dst, relu=int(launch.relu), tf32=int(launch.tf32))
        params += [row[name] for name in LAUNCH_FIELDS]
    return LaunchTable([launch.weight for launch in launches], [launch.bias for launch in launches], params)


def op_groups() -> bool:
    """INCEPTION_FAST_OP_GROUPS=1: run_launches makes one call of `cuda_op_launches` for a stage's
    launches (default 0: a call of its op per launch)."""
    setting = os.environ.get(ENV_OP_GROUPS, "0")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV_OP_GROUPS}={setting!r}: use 1 (one op call per stage) or 0 (one per launch)")
    return setting == "1"


def run_launches(launches: list, buffers: dict, table: LaunchTable | None = None) -> None:
    """The op launches of one stage on `buffers` (pk.BUF_* -> an NHWC-contiguous tensor), one
    after another on the current stream, each on every SM: SM shares pay only side by side.
    With a `table` of them (launch_table) and INCEPTION_FAST_OP_GROUPS=1, in one call of the op
    `cuda_op_launches`: the same launches, without a Python call and an op dispatch each (the
    host bounds a call without a CUDA graph at small batches). Not while torch.compile traces:
    there each op is a node of the graph. Noted in an active `launch_record` recording."""
    launch_record.note_cutlass(launches)
    if table is not None and len(launches) > 1 and not torch.compiler.is_compiling() and op_groups():
        op = torch.ops.inception_fast.cuda_op_launches.default
        op(buffers[pk.BUF_INPUT], buffers[pk.BUF_WORK], buffers[pk.BUF_OUTPUT], table.weights, table.biases,
           table.with_splits([launch.splits(buffers) for launch in launches]))
        return
    for launch in launches:
        launch.run(buffers, side_by_side=False)


# --- availability -----------------------------------------------------------------------------

_asked: dict = {}  # (op name, device) -> (compiled in, reason)


def _gemm_probe(op, device) -> None:
    x = torch.empty((0, ALIGN), dtype=torch.float16, device=device)
    weight = torch.empty((ALIGN, ALIGN), dtype=torch.float16, device=device)
    op(x, weight, torch.zeros(ALIGN, device=device), torch.empty_like(x), 0, False)


def _conv_probe(op, device) -> None:
    x = torch.empty((0, 1, 1, ALIGN), dtype=torch.float16, device=device)
    weight = torch.empty((ALIGN, 1, 1, ALIGN), dtype=torch.float16, device=device)
    op(x, weight, torch.zeros(ALIGN, device=device), torch.empty_like(x), 0, 0, 1, 0, 0, False)


_PROBES = {  # op name -> (what it is, a call with an empty problem: no launch either way)
    "cuda_gemm_conv1x1": ("the CUTLASS 1x1-conv GEMM", _gemm_probe),
    "cuda_conv_fprop": ("the CUTLASS k x k conv", _conv_probe),
}


def _compiled_in(name: str, device) -> tuple[bool, str]:
    """Whether the loaded extension has op `name` with its kernels compiled in (the CUTLASS
    headers, for the conv also CUTLASS's util headers, were found at build time), asked once
    per device with an empty problem. The question is a call into the library that a
    torch.compile trace must not see: `optimize()` asks it first (`resolve_backend`), and one
    first asked inside a trace answers no (the stage kernel then takes those convs). Not
    `torch.compiler.disable`: that imports torch._dynamo, seconds of every process's first call."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"the CUTLASS kernels run on CUDA devices, not {device.type}"
    if device.index is None:  # "cuda" and "cuda:0" are one device: one question
        device = torch.device(device.type, torch.cuda.current_device())
    if (name, device) not in _asked and torch.compiler.is_compiling():
        return False, (f"whether {name} is compiled in was first asked inside a torch.compile trace; "
                       "optimize() the model on this device before compiling it")
    if (name, device) not in _asked:
        what, probe = _PROBES[name]
        try:
            op = getattr(torch.ops.inception_fast, name).default
        except (AttributeError, RuntimeError):
            _asked[name, device] = (False, f"the loaded CUDA extension has no {name} op; rebuild it "
                                           "(pip install -e . or clear the extension's build cache)")
            return _asked[name, device]
        try:
            probe(op, device)
            _asked[name, device] = (True, f"{what} is compiled in")
        except RuntimeError as err:
            _asked[name, device] = (False, str(err).splitlines()[0].removeprefix(f"{name}: "))
    return _asked[name, device]


def op_status(device) -> tuple[bool, str]:
    """Whether the GEMM op's kernels are compiled in (see `_compiled_in`)."""
    return _compiled_in("cuda_gemm_conv1x1", device)


def conv_op_status(device) -> tuple[bool, str]:
    """Whether the k x k conv op's kernels are compiled in (see `_compiled_in`)."""
    return _compiled_in("cuda_conv_fprop", device)


def op_availability(device=None) -> tuple[bool, str]:
    """(usable, reason) of the GEMM op on `device`: the CUDA extension loads, the card is
    Hopper, and the op is compiled in."""
    ok, reason = cuda_backend.availability(device)
    if not ok:
        return ok, reason
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return False, (f"the CUTLASS GEMM kernels are built for compute capability 9.0 (Hopper), {device} "
                       f"has {major}.{minor}")
    ok, why = op_status(device)
    if not ok:
        return False, why
    return True, f"{reason}; {why}"
