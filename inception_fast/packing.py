"""One stage of a block plan packed into flat device tensors: the input of one grouped kernel
launch. The Triton and the CUDA backends read the same format.

A stage is a list of *problems*, each a row of the int64 table ``problems[P, NUM_FIELDS]``:

  KIND       CONV, AVG_POOL (AvgPoolBiasRelu) or MAX_POOL
  SRC_BUF    which buffer the problem reads: BUF_INPUT, BUF_WORK or BUF_OUTPUT
  SRC_C0     first channel read in that buffer
  CIN        channels read (for pools: = COLS)
  COLS       output columns (conv output channels; pool channels)
  KH, KW, STRIDE, PAD_H, PAD_W   the window
  W_OFF      element offset of the conv weight in ``weights`` (OHWI: [COLS, KH*KW*CIN], row k =
             (kh*KW + kw)*CIN + c contiguous), -1 for pools
  COL_OFF    offset of the problem's columns in ``bias``, ``col_dst`` and ``col_flags``

Per column j (global index COL_OFF + n):
  bias[j]       fp32 bias added in the epilogue (0 on raw columns and max-pool columns)
  col_dst[j]    channel index in the destination buffer
  col_flags[j]  FLAG_RELU | FLAG_TO_OUTPUT (destination is the block output, else work)

Destination pixels: a problem's flattened output pixel m = (n*OH + oh)*OW + ow indexes its
destination buffer directly, because every destination has the problem's output size.
The buffers are NHWC with pixel strides in_channels, work_channels, out_channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .plan import AVG, AVG_INCLUDE_PAD, INPUT, MAX, OUTPUT, WORK, BlockPlan, Conv, GlobalAvgPool, Pool, Slice

CONV, AVG_POOL, MAX_POOL, AVG_POOL_INCLUDE_PAD = 0, 1, 2, 3
BUF_INPUT, BUF_WORK, BUF_OUTPUT = 0, 1, 2
FLAG_RELU, FLAG_TO_OUTPUT, FLAG_RESIDUAL = 1, 2, 4
_POOL_KINDS = {AVG: AVG_POOL, MAX: MAX_POOL, AVG_INCLUDE_PAD: AVG_POOL_INCLUDE_PAD}
(KIND, SRC_BUF, SRC_C0, CIN, COLS, KH, KW, STRIDE, PAD_H, PAD_W, W_OFF, COL_OFF) = range(12)
NUM_FIELDS = 12
NUM_FIELDS_BASE = 12  # fields after these are optional window flags (ceil mode)
_BUF = {INPUT: BUF_INPUT, WORK: BUF_WORK, OUTPUT: BUF_OUTPUT}


@dataclass
class PackedStage:
    problems: torch.Tensor  # int64 [P, NUM_FIELDS], on the device
    rows: list  # the same table as Python lists (host-side tiling needs no device sync)
    weights: torch.Tensor  # activation dtype, every conv's OHWI weight back to back
    bias: torch.Tensor  # fp32 [total columns]
    col_dst: torch.Tensor  # int32 [total columns]
    col_flags: torch.Tensor  # int32 [total columns]
    configs: dict = field(default_factory=dict)  # launch config chosen per input shape
    scratch: dict = field(default_factory=dict)  # split-K buffers per shape and config
    tf32_weights: torch.Tensor | None = None  # fp32 weights rounded to TF32, made on first use

    def weights_for(self, tf32: bool) -> torch.Tensor:
        """The weights as a kernel with TF32 dots (True) or exact dots reads them."""
        if not tf32:
            return self.weights
        if self.tf32_weights is None:
            self.tf32_weights = round_to_tf32(self.weights)
        return self.tf32_weights

    @property
    def num_problems(self) -> int:
        return len(self.rows)

    def output_hw(self, p: int, height: int, width: int) -> tuple[int, int]:
        row = self.rows[p]
        oh = (height + 2 * row[PAD_H] - row[KH]) // row[STRIDE] + 1
        ow = (width + 2 * row[PAD_W] - row[KW]) // row[STRIDE] + 1
        return oh, ow


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32 (10 mantissa bits), to nearest with ties away from zero:
    adding half an ulp to the magnitude bits, then clearing the 13 dropped bits."""
    bits = t.view(torch.int32)  # same element size: keeps any layout
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


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


def _pool_window(op, height: int | None, width: int | None) -> tuple:
    """(kind, kh, kw, stride, pad_h, pad_w, ceil) of a pool op; a global pool is an average
    over the whole input, so its window needs the input size."""
    if isinstance(op, GlobalAvgPool):
        if height is None:
            raise ValueError("a global pool is packed for one input size: pass height and width")
        return AVG_POOL, height, width, 1, 0, 0, 0
    if op.ceil_mode and op.kind != MAX:
        raise ValueError(f"average pooling with ceil_mode=True is not supported by the kernels ({op})")
    (kh, kw), (ph, pw) = op.kernel, op.padding
    return _POOL_KINDS[op.kind], kh, kw, op.stride, ph, pw, int(op.ceil_mode)


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
        if isinstance(op, Conv):
            kind, (kh, kw), stride, (ph, pw) = CONV, op.kernel, op.stride, op.padding
            cin = op.src.channels
            if padded_in_channels and op.src.buffer == INPUT:
                if op.src != Slice(INPUT, 0, plan.in_channels):
                    raise ValueError("input padding needs convs that read the whole input")
                weight = torch.nn.functional.pad(weight, (0, 0, 0, 0, 0, padded_in_channels - cin))
                cin = padded_in_channels
            ohwi = weight.permute(0, 2, 3, 1).reshape(-1)
            weights.append(ohwi)
            this_w_off, w_off = w_off, w_off + ohwi.numel()
        else:
            kind, kh, kw, stride, ph, pw, _ceil = _pool_window(op, height, width)
            this_w_off = -1
            cin = op.src.channels
            if bias is None:
                bias = torch.zeros(len(cols))
        rows.append([
            kind, _BUF[op.src.buffer], op.src.start, cin, len(cols),
            kh, kw, stride, ph, pw, this_w_off, col_off,
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
    return make_stage(rows, weights, biases, dsts, flags, device, dtype)


def make_stage(rows, weights, biases, dsts, flags, device, dtype) -> PackedStage:
    """Move a stage's host-side lists onto the device."""
    empty = torch.zeros(0)
    return PackedStage(
        problems=torch.tensor(rows, dtype=torch.int64, device=device),
        rows=rows,
        weights=(torch.cat(weights) if weights else empty).to(device=device, dtype=dtype).contiguous(),
        bias=torch.cat(biases).to(device=device, dtype=torch.float32),
        col_dst=torch.tensor(dsts, dtype=torch.int32, device=device),
        col_flags=torch.tensor(flags, dtype=torch.int32, device=device),
    )


def pack_block(block, device, dtype, padded_in_channels: int | None = None,
               height: int | None = None, width: int | None = None) -> list[PackedStage]:
    """Every stage of a block; `height`/`width` (the input size) only where `sized(plan)`."""
    return [
        pack_stage(block, s, device, dtype, padded_in_channels if s == 0 else None, height, width)
        for s in range(len(block.plan.stages))
    ]


_KIND_NAMES = {CONV: "conv", AVG_POOL: "avg", MAX_POOL: "max", AVG_POOL_INCLUDE_PAD: "avgpad"}


def stage_signature(stage: PackedStage) -> str:
    """The shape of a stage's work, e.g. ``conv1x1s1p0:384>320+avg3x3s1p1:96>96``: what tile
    choices are keyed by, so a stage of the same shape in another block or network shares them."""
    parts = []
    for row in stage.rows:
        ceil = "c" if len(row) > NUM_FIELDS_BASE and row[NUM_FIELDS_BASE] else ""
        parts.append(
            f"{_KIND_NAMES[row[KIND]]}{row[KH]}x{row[KW]}s{row[STRIDE]}p{row[PAD_H]}{row[PAD_W]}{ceil}:"
            f"{row[CIN]}>{row[COLS]}"
        )
    return "+".join(parts)


def sized(plan: BlockPlan) -> bool:
    """Whether the packed form depends on the input size (a global pool's window does)."""
    return any(isinstance(op, GlobalAvgPool) for op in plan.ops)
