"""The plan vocabulary: what one fused block computes, as data that every backend executes.

A *block plan* is a list of dependency stages; the ops of one stage read only what earlier
stages (or the block input) hold, so a backend may run a whole stage as one grouped launch.
Every block works on three NHWC buffers:

- ``input``: the block input;
- ``output``: the block output, whose channel slices replace the concatenation;
- ``work``: one scratch buffer at the input's spatial size holding every intermediate as a
  channel slice.

A ``Conv`` may stack sibling convolutions that read the same slice with the same window along
its output channels (the branches' 1x1 convs: one wider GEMM); its ``writes`` split those
columns, in order, into destination slices, each with its epilogue (bias, residual, ReLU).

The average-pool rewrite: an average pool followed by a 1x1 convolution is run as the 1x1
convolution (inside the stacked GEMM, its columns written without bias or ReLU) followed by the
pool over its few output channels, which then adds the conv's bias and applies the ReLU. This
is exact because average pooling is linear per channel (with or without counting the padding:
the divisor depends on the pixel only) and the 1x1 conv is linear across channels:
W @ avgpool(x) == avgpool(W @ x), and the padding's zeros map to W @ 0 == 0.

Plans are derived from a model by `inception_fast.compiler`; nothing here knows a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .windows import out_size

INPUT, WORK, OUTPUT = "input", "work", "output"
MAX, AVG, AVG_INCLUDE_PAD = "max", "avg", "avg_include_pad"  # Pool kinds


@dataclass(frozen=True)
class Slice:
    buffer: str
    start: int
    stop: int

    @property
    def channels(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Write:
    """A run of output columns of a Conv and where it goes.

    bias: add the folded bias (False on the avg-pool rewrite's columns: the pool adds it);
    residual: add the block input at the destination channels (a residual connection; the
    destination is the block output at the input's size); relu: then clamp at zero."""

    dst: Slice
    bias: bool = True
    relu: bool = True
    residual: bool = False


@dataclass(frozen=True)
class Conv:
    # The stacked layers' names in the source model, in column order: for messages only, so
    # that equal blocks at different places have equal plans.
    sources: tuple[str, ...] = field(compare=False, repr=False)
    src: Slice = None
    kernel: tuple[int, int] = (1, 1)
    writes: tuple[Write, ...] = ()
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @property
    def in_channels(self) -> int:
        return self.src.channels

    @property
    def out_channels(self) -> int:
        return sum(w.dst.channels for w in self.writes)


@dataclass(frozen=True)
class Pool:
    """A per-channel pooling window: MAX, AVG (padding not counted, PyTorch's
    count_include_pad=False) or AVG_INCLUDE_PAD (divides by the window size). `ceil_mode`:
    the output size rounds up (PyTorch's rule; the last window may be partial). `bias`: the pool
    adds a per-channel bias (the avg-pool rewrite: the folded bias of the 1x1 conv it now
    follows), then `relu` applies."""

    kind: str
    src: Slice
    dst: Slice
    kernel: tuple[int, int]
    stride: int
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    bias: bool = False
    relu: bool = False
    bias_source: str = field(default="", compare=False, repr=False)  # that conv's name, for messages


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over all pixels of each channel: a 1x1 output."""

    src: Slice
    dst: Slice


@dataclass(frozen=True)
class BlockPlan:
    name: str  # the source module's class, for messages and reports
    in_channels: int
    out_channels: int
    work_channels: int
    stages: tuple[tuple, ...] = field(default_factory=tuple)
    path: str = field(default="", compare=False, repr=False)  # where the block sits in the source model

    @property
    def ops(self) -> list:
        return [op for stage in self.stages for op in stage]

    @property
    def convs(self) -> list[Conv]:
        return [op for op in self.ops if isinstance(op, Conv)]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.path})" if self.path else self.name


def op_output_hw(op, height: int, width: int) -> tuple[int, int]:
    """Spatial size an op produces from an input of `height` x `width`."""
    if isinstance(op, GlobalAvgPool):
        return 1, 1
    ceil = getattr(op, "ceil_mode", False)
    (kh, kw), (ph, pw) = op.kernel, op.padding
    return out_size(height, kh, op.stride, ph, ceil), out_size(width, kw, op.stride, pw, ceil)


def op_destinations(op) -> list[Slice]:
    return [w.dst for w in op.writes] if isinstance(op, Conv) else [op.dst]


def op_writes_output(op) -> bool:
    return any(d.buffer == OUTPUT for d in op_destinations(op))


def block_output_hw(plan: BlockPlan, height: int, width: int) -> tuple[int, int]:
    """Output size of a block, or ValueError naming the op whose window does not fit."""
    out_hw = None
    for op in plan.ops:
        if not isinstance(op, GlobalAvgPool):
            (kh, kw), (ph, pw) = op.kernel, op.padding
            if height + 2 * ph < kh or width + 2 * pw < kw:
                raise ValueError(
                    f"{plan.label}: input of {height}x{width} is too small for its "
                    f"{kh}x{kw} window (padding {(ph, pw)})"
                )
        if op_writes_output(op):
            out_hw = op_output_hw(op, height, width)
    return out_hw
