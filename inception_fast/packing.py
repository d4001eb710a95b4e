"""One stage of a block plan packed into flat device tensors: the input of one grouped kernel
launch. The Triton and the CUDA backends read the same format.

A stage is a list of *problems*, each a row of the int64 table ``problems[P, NUM_FIELDS]``:

  KIND       CONV; AVG_POOL (count_include_pad=False: divides by the in-image taps);
             MAX_POOL; AVG_POOL_INCLUDE_PAD (count_include_pad=True: divides by KH*KW)
  SRC_BUF    which buffer the problem reads: BUF_INPUT, BUF_WORK or BUF_OUTPUT
  SRC_C0     first channel read in that buffer
  CIN        channels read (for pools: = COLS)
  COLS       output columns (conv output channels; pool channels)
  KH, KW, STRIDE, PAD_H, PAD_W   the window (padding on both sides)
  W_OFF      element offset of the conv weight in ``weights`` (OHWI: [COLS, KH*KW*CIN], row k =
             (kh*KW + kw)*CIN + c contiguous), -1 for pools
  COL_OFF    offset of the problem's columns in ``bias``, ``col_dst`` and ``col_flags``
  CEIL       1: ceil_mode (MAX_POOL and AVG_POOL only), 0: floor. Output size per dimension:
             `windows.out_size`; taps past the input read nothing (max: -inf; AVG_POOL: not
             counted)

Per column j (global index COL_OFF + n):
  bias[j]       fp32 bias added in the epilogue (0 on raw columns and max-pool columns)
  col_dst[j]    channel index in the destination buffer
  col_flags[j]  FLAG_RELU | FLAG_TO_OUTPUT (destination is the block output, else work)
                | FLAG_RESIDUAL (adds the block input at the same pixel, channel col_dst[j])

Epilogue per column: value = acc + bias[j] (+ input[pixel, col_dst[j]] with FLAG_RESIDUAL),
then ReLU with FLAG_RELU. A residual column goes to the block output, and its problem keeps
the input size (stride 1, KH = 2*PAD_H + 1, KW = 2*PAD_W + 1), so an output pixel is an input
pixel.

Destination pixels: a problem's flattened output pixel m = (n*OH + oh)*OW + ow indexes its
destination buffer directly, because every destination has the problem's output size.
The buffers are NHWC with pixel strides in_channels, work_channels, out_channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .graphs import outside_capture

# The table's layout, in a torch-free module of its own for the kernels (see there).
from .packed_layout import (
    ALL_FLAGS,
    AVG_POOL,
    AVG_POOL_INCLUDE_PAD,
    BUF_INPUT,
    BUF_OUTPUT,
    BUF_WORK,
    CEIL,
    CIN,
    COL_OFF,
    COLS,
    CONV,
    FLAG_RELU,
    FLAG_RESIDUAL,
    FLAG_TO_OUTPUT,
    KH,
    KIND,
    KINDS,
    KW,
    MAX_POOL,
    NUM_FIELDS,
    PAD_H,
    PAD_W,
    SRC_BUF,  # noqa: F401 - unused here, re-exported with the rest of the layout
    SRC_C0,
    STRIDE,
    W_OFF,  # noqa: F401 - as SRC_BUF
)
from .plan import AVG, AVG_INCLUDE_PAD, INPUT, MAX, OUTPUT, WORK, BlockPlan, Conv, GlobalAvgPool, Slice
from .windows import out_size

_BUF = {INPUT: BUF_INPUT, WORK: BUF_WORK, OUTPUT: BUF_OUTPUT}


@dataclass
class PackedStage:
    """The format alone; what a backend keeps for its launches (the Triton backends' tile
    configs, split-K buffers, TF32 weights) it keeps beside the stage."""

    problems: torch.Tensor  # int64 [P, NUM_FIELDS], on the device
    rows: list  # the same table as Python lists (host-side tiling needs no device sync)
    weights: torch.Tensor  # activation dtype, every conv's OHWI weight back to back
    bias: torch.Tensor  # fp32 [total columns]
    col_dst: torch.Tensor  # int32 [total columns]
    col_flags: torch.Tensor  # int32 [total columns]
    residual: bool = False  # some column has FLAG_RESIDUAL (the kernels compile its load only then)

    @property
    def num_problems(self) -> int:
        return len(self.rows)

    def output_hw(self, p: int, height: int, width: int) -> tuple[int, int]:
        return row_output_hw(self.rows[p], height, width)


def row_output_hw(row, height: int, width: int) -> tuple[int, int]:
    """Output size of one problem row on a `height` x `width` source."""
    ceil = bool(row[CEIL])
    return (
        out_size(height, row[KH], row[STRIDE], row[PAD_H], ceil),
        out_size(width, row[KW], row[STRIDE], row[PAD_W], ceil),
    )


# --- The plan ops as packed problems: the only code here that reads plan ops ----------------

_POOL_KINDS = {AVG: AVG_POOL, MAX: MAX_POOL, AVG_INCLUDE_PAD: AVG_POOL_INCLUDE_PAD}


def _window(op, height: int | None = None, width: int | None = None) -> tuple:
    """(kind, kh, kw, stride, pad_h, pad_w, ceil) of a plan op. A global pool averages the
    whole input, so its window is the input size (`height`, `width`)."""
    if isinstance(op, Conv):
        return (CONV, *op.kernel, op.stride, *op.padding, 0)
    if isinstance(op, GlobalAvgPool):
        if height is None or width is None:
            raise ValueError("a global pool is packed for one input size: pass height and width")
        return AVG_POOL, height, width, 1, 0, 0, 0
    return (_POOL_KINDS[op.kind], *op.kernel, op.stride, *op.padding, int(op.ceil_mode))


def _columns(op) -> list[tuple[int, int]]:
    """(destination channel, flags) for each output column of an op."""

    def flags(dst: Slice, relu: bool, residual: bool = False) -> int:
        return ((FLAG_RELU if relu else 0) | (FLAG_TO_OUTPUT if dst.buffer == OUTPUT else 0)
                | (FLAG_RESIDUAL if residual else 0))

    if isinstance(op, Conv):
        cols = []
        for write in op.writes:
            f = flags(write.dst, write.relu, write.residual)
            cols += [(write.dst.start + i, f) for i in range(write.dst.channels)]
        return cols
    f = flags(op.dst, getattr(op, "relu", False))
    return [(op.dst.start + i, f) for i in range(op.dst.channels)]


ALIGN = 8  # the kernels load and store 8 channels (16 bytes) at a time


def unsupported_reason(plan: BlockPlan) -> str | None:
    """Why the kernels cannot run `plan` (None if they can): the packed format's rules that
    need no weights. The network input's channels are padded to ALIGN by the backends."""
    for op in plan.ops:
        src = op.src
        if src.buffer != INPUT or src != Slice(INPUT, 0, plan.in_channels):
            if src.start % ALIGN or src.channels % ALIGN:
                return f"{op} reads channels {src.start}:{src.stop}, not multiples of {ALIGN}"
        for dst in ([w.dst for w in op.writes] if isinstance(op, Conv) else [op.dst]):
            if dst.start % ALIGN or dst.channels % ALIGN:
                return f"it writes channels {dst.start}:{dst.stop}, not multiples of {ALIGN}"
        if getattr(op, "ceil_mode", False) and op.kind != MAX:
            return "average pooling with ceil_mode=True (its edge divisor is not computed by the kernels)"
    return None


def pack_stage(block, stage_index: int, device, dtype, padded_in_channels: int | None = None,
               height: int | None = None, width: int | None = None) -> PackedStage:
    """Pack stage `stage_index` of a FusedBlock for one grouped launch on `device` in `dtype`.

    `padded_in_channels`: the block input carries this many channels, the real ones first and
    zeros after (the network input, 3 channels, is padded to 8 for 16-byte loads); convs that
    read the input get zero weights for the extra channels.
    """
    plan: BlockPlan = block.plan
    first = sum(len(s) for s in plan.stages[:stage_index])
    rows, weights, biases, dsts, flags = [], [], [], [], []
    w_off = col_off = 0
    for i, op in enumerate(plan.stages[stage_index], start=first):
        weight, bias = block.op_params(i)
        cols = _columns(op)
        kind, kh, kw, stride, ph, pw, ceil = _window(op, height, width)
        cin = op.src.channels
        if kind == CONV:
            if padded_in_channels and op.src.buffer == INPUT:
                if op.src != Slice(INPUT, 0, plan.in_channels):
                    raise ValueError("input padding needs convs that read the whole input")
                weight = torch.nn.functional.pad(weight, (0, 0, 0, 0, 0, padded_in_channels - cin))
                cin = padded_in_channels
            ohwi = weight.permute(0, 2, 3, 1).reshape(-1)
            weights.append(ohwi)
            this_w_off, w_off = w_off, w_off + ohwi.numel()
        else:
            this_w_off = -1
            if bias is None:
                bias = torch.zeros(len(cols))
        rows.append([
            kind, _BUF[op.src.buffer], op.src.start, cin, len(cols),
            kh, kw, stride, ph, pw, this_w_off, col_off, ceil,
        ])
        biases.append(bias.float().cpu())
        dsts += [c for c, _ in cols]
        flags += [f for _, f in cols]
        col_off += len(cols)
    for row in rows:
        # The kernels load and store 8 channels (16 bytes) at a time.
        if row[SRC_C0] % 8 or row[CIN] % 8 or row[COLS] % 8:
            raise ValueError(f"{plan.name}: channel counts and offsets must be multiples of 8, got {row}")
    if any(d % 8 for d in dsts[::8]):
        raise ValueError(f"{plan.name}: destination slices must start at multiples of 8")
    try:
        return make_stage(rows, weights, biases, dsts, flags, device, dtype, in_channels=plan.in_channels)
    except ValueError as error:
        raise ValueError(f"{plan.name}, stage {stage_index}: {error}") from None


def check_stage(rows, dsts, flags, in_channels: int | None = None) -> None:
    """The format's rules that hold at every input size (ValueError naming the row or column).
    `in_channels`: the block input's real channel count, which bounds residual channels."""
    for p, row in enumerate(rows):
        if len(row) != NUM_FIELDS:
            raise ValueError(f"problem {p} has {len(row)} fields, the format has {NUM_FIELDS}: {row}")
        kind, ceil = row[KIND], row[CEIL]
        if kind not in KINDS:
            raise ValueError(f"problem {p} has unknown kind {kind}; kinds are {KINDS}")
        if ceil not in (0, 1):
            raise ValueError(f"problem {p} has CEIL {ceil}; it must be 0 (floor) or 1 (ceil_mode)")
        if ceil and kind not in (MAX_POOL, AVG_POOL):
            raise ValueError(
                f"problem {p}: ceil_mode is for MAX_POOL and AVG_POOL (count_include_pad=False) only, "
                f"got kind {kind}; PyTorch's include-pad average divides ceil-mode edge windows by a "
                "clipped count the kernels do not compute (use count_include_pad=False or floor mode)"
            )
        if kind != CONV and (2 * row[PAD_H] > row[KH] or 2 * row[PAD_W] > row[KW]):
            raise ValueError(
                f"problem {p}: pool padding ({row[PAD_H]}, {row[PAD_W]}) exceeds half its "
                f"{row[KH]}x{row[KW]} window (PyTorch's rule; a window could then see no input)"
            )
        columns = range(row[COL_OFF], row[COL_OFF] + row[COLS])
        residual = [j for j in columns if flags[j] & FLAG_RESIDUAL]
        if not residual:
            continue
        keeps_size = row[STRIDE] == 1 and row[KH] == 2 * row[PAD_H] + 1 and row[KW] == 2 * row[PAD_W] + 1
        if not keeps_size:
            raise ValueError(
                f"problem {p} has residual columns but its {row[KH]}x{row[KW]} window (stride "
                f"{row[STRIDE]}, padding {row[PAD_H]}, {row[PAD_W]}) changes the size; a residual "
                "problem needs stride 1 and KH = 2*PAD_H + 1, KW = 2*PAD_W + 1"
            )
        for j in residual:
            if not flags[j] & FLAG_TO_OUTPUT:
                raise ValueError(f"column {j} of problem {p} adds the residual but goes to the work "
                                 "buffer; residual columns must go to the block output")
            if in_channels is not None and not 0 <= dsts[j] < in_channels:
                raise ValueError(f"column {j} of problem {p} adds input channel {dsts[j]}, but the "
                                 f"block input has {in_channels} channels")
    for j, f in enumerate(flags):
        if f & ~ALL_FLAGS:
            raise ValueError(f"column {j} has unknown flag bits {f & ~ALL_FLAGS:#x}")


def make_stage(
    rows, weights, biases, dsts, flags, device, dtype, in_channels: int | None = None
) -> PackedStage:
    """Move a stage's host-side lists onto the device, after `check_stage`."""
    check_stage(rows, dsts, flags, in_channels)
    empty = torch.zeros(0)
    return PackedStage(
        problems=torch.tensor(rows, dtype=torch.int64, device=device),
        rows=rows,
        weights=(torch.cat(weights) if weights else empty).to(device=device, dtype=dtype).contiguous(),
        bias=torch.cat(biases).to(device=device, dtype=torch.float32),
        col_dst=torch.tensor(dsts, dtype=torch.int32, device=device),
        col_flags=torch.tensor(flags, dtype=torch.int32, device=device),
        residual=any(f & FLAG_RESIDUAL for f in flags),
    )


def pack_block(block, device, dtype, padded_in_channels: int | None = None,
               height: int | None = None, width: int | None = None) -> list[PackedStage]:
    """Every stage of a block; `height`/`width` (the input size) only where `sized(plan)`."""
    outside_capture(device, f"packing {block.plan.label}")
    reason = unsupported_reason(block.plan)
    if reason is not None:
        raise ValueError(
            f"the fused kernels cannot run {block.plan.label}: {reason}; use backend='auto' (which runs "
            "such blocks on PyTorch ops) or backend='torch'"
        )
    return [
        pack_stage(block, s, device, dtype, padded_in_channels if s == 0 else None, height, width)
        for s in range(len(block.plan.stages))
    ]


def sized(plan: BlockPlan) -> bool:
    """Whether the packed form depends on the input size (a global pool's window does)."""
    return any(isinstance(op, GlobalAvgPool) for op in plan.ops)


_KIND_NAMES = {CONV: "conv", AVG_POOL: "avg", MAX_POOL: "max", AVG_POOL_INCLUDE_PAD: "avgpad"}


def stage_signature(stage: PackedStage) -> str:
    """The shape of a stage's work, e.g. ``conv1x1s1p0.0:384>320+avg3x3s1p1.1:96>96``: what tile
    choices are keyed by, so a stage of the same shape in another block or network shares them."""
    parts = []
    for row in stage.rows:
        ceil = "c" if row[CEIL] else ""
        parts.append(
            f"{_KIND_NAMES[row[KIND]]}{row[KH]}x{row[KW]}s{row[STRIDE]}p{row[PAD_H]}.{row[PAD_W]}{ceil}:"
            f"{row[CIN]}>{row[COLS]}"
        )
    return "+".join(parts)
