"""The block plan: which convolutions and pools run in which dependency stage, and where each
result lands. Written once, read by every backend.

Every block works on three NHWC buffers:

- ``input``: the block input;
- ``output``: the block output, whose channel slices replace the concat;
- ``work``: one scratch buffer at the input's spatial size holding every intermediate as a
  channel slice (all Inception-v4 intermediates live at the block input's resolution).

A ``Conv`` may stack sibling convolutions that read the same input along the output channels
(the stage-1 1x1 GEMM); its ``writes`` split those columns, in order, into destination slices.
The AvgPool branches are rewritten: their 1x1 conv runs inside the stage-1 GEMM with a ``raw``
write (no bias, no ReLU), and an ``AvgPoolBiasRelu`` op pools those few channels in a later
stage and adds the bias. This is exact because average pooling is linear per channel and the
1x1 conv is linear across channels: W @ avgpool(x) == avgpool(W @ x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

INPUT, WORK, OUTPUT = "input", "work", "output"


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
    """A run of output columns of a Conv and where it goes. `raw` skips bias and ReLU."""

    dst: Slice
    raw: bool = False


@dataclass(frozen=True)
class Conv:
    sources: tuple[str, ...]  # ConvBnRelu paths inside the block, stacked along out-channels
    src: Slice
    kernel: tuple[int, int]
    writes: tuple[Write, ...]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @property
    def in_channels(self) -> int:
        return self.src.channels

    @property
    def out_channels(self) -> int:
        return sum(w.dst.channels for w in self.writes)


@dataclass(frozen=True)
class AvgPoolBiasRelu:
    """relu(avgpool3x3(z) + b): AvgPool(3, stride 1, pad 1, count_include_pad=False) over the
    raw 1x1 outputs z of the pool branch; b is the folded bias of conv `source`."""

    source: str
    src: Slice
    dst: Slice
    kernel: int = 3
    stride: int = 1
    padding: int = 1


@dataclass(frozen=True)
class MaxPool:
    """MaxPool(3, stride 2, no padding)."""

    src: Slice
    dst: Slice
    kernel: int = 3
    stride: int = 2
    padding: int = 0


@dataclass(frozen=True)
class BlockPlan:
    name: str
    in_channels: int
    out_channels: int
    work_channels: int
    stages: tuple[tuple, ...] = field(default_factory=tuple)

    @property
    def ops(self):
        return [op for stage in self.stages for op in stage]

    @property
    def convs(self):
        return [op for op in self.ops if isinstance(op, Conv)]


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def op_output_hw(op, height: int, width: int) -> tuple[int, int]:
    """Spatial size an op produces from an input of `height` x `width`."""
    if isinstance(op, Conv):
        (kh, kw), (ph, pw) = op.kernel, op.padding
        return out_size(height, kh, op.stride, ph), out_size(width, kw, op.stride, pw)
    return (
        out_size(height, op.kernel, op.stride, op.padding),
        out_size(width, op.kernel, op.stride, op.padding),
    )


def op_kernel_hw(op) -> tuple[int, int]:
    return op.kernel if isinstance(op, Conv) else (op.kernel, op.kernel)


def block_output_hw(plan: BlockPlan, height: int, width: int) -> tuple[int, int]:
    """Output size of a block, or ValueError naming the op whose window does not fit."""
    for op in plan.ops:
        kh, kw = op_kernel_hw(op)
        pad = op.padding if isinstance(op, Conv) else (op.padding, op.padding)
        if height + 2 * pad[0] < kh or width + 2 * pad[1] < kw:
            raise ValueError(
                f"{plan.name}: input of {height}x{width} is too small for its "
                f"{kh}x{kw} window (padding {pad})"
            )
        if op_writes_output(op):
            out_hw = op_output_hw(op, height, width)
    return out_hw


def op_writes_output(op) -> bool:
    dsts = [w.dst for w in op.writes] if isinstance(op, Conv) else [op.dst]
    return any(d.buffer == OUTPUT for d in dsts)


# ---------------------------------------------------------------------------------------------
# The plans. Slices are [start, stop) channels; work slices are laid out in order of first use.


def _in(c):
    return Slice(INPUT, 0, c)


def _w(a, b):
    return Slice(WORK, a, b)


def _o(a, b):
    return Slice(OUTPUT, a, b)


def _to(*dsts):
    return tuple(dst if isinstance(dst, Write) else Write(dst) for dst in dsts)


def conv_bn_relu_plan(name, cin, cout, kernel, stride=1, padding=0) -> BlockPlan:
    """A lone ConvBnRelu (the stem convs): one stage, one conv."""
    conv = Conv(("",), _in(cin), (kernel, kernel), _to(_o(0, cout)), stride, (padding, padding))
    return BlockPlan(name, cin, cout, 0, ((conv,),))


MIXED_3A = BlockPlan(
    "Mixed3a", 64, 160, 0,
    (
        (
            MaxPool(_in(64), _o(0, 64)),
            Conv(("conv",), _in(64), (3, 3), _to(_o(64, 160)), stride=2),
        ),
    ),
)

MIXED_4A = BlockPlan(
    "Mixed4a", 160, 192, 256,
    (
        (Conv(("branch0.0", "branch1.0"), _in(160), (1, 1), _to(_w(0, 128))),),
        (
            Conv(("branch0.1",), _w(0, 64), (3, 3), _to(_o(0, 96))),
            Conv(("branch1.1",), _w(64, 128), (1, 7), _to(_w(128, 192)), padding=(0, 3)),
        ),
        (Conv(("branch1.2",), _w(128, 192), (7, 1), _to(_w(192, 256)), padding=(3, 0)),),
        (Conv(("branch1.3",), _w(192, 256), (3, 3), _to(_o(96, 192))),),
    ),
)

MIXED_5A = BlockPlan(
    "Mixed5a", 192, 384, 0,
    (
        (
            Conv(("conv",), _in(192), (3, 3), _to(_o(0, 192)), stride=2),
            MaxPool(_in(192), _o(192, 384)),
        ),
    ),
)

INCEPTION_A = BlockPlan(
    "InceptionA", 384, 384, 320,
    (
        (
            Conv(
                ("branch0", "branch1.0", "branch2.0", "branch3.1"), _in(384), (1, 1),
                _to(_o(0, 96), _w(0, 128), Write(_w(128, 224), raw=True)),
            ),
        ),
        (
            Conv(("branch1.1",), _w(0, 64), (3, 3), _to(_o(96, 192)), padding=(1, 1)),
            Conv(("branch2.1",), _w(64, 128), (3, 3), _to(_w(224, 320)), padding=(1, 1)),
            AvgPoolBiasRelu("branch3.1", _w(128, 224), _o(288, 384)),
        ),
        (Conv(("branch2.2",), _w(224, 320), (3, 3), _to(_o(192, 288)), padding=(1, 1)),),
    ),
)

REDUCTION_A = BlockPlan(
    "ReductionA", 384, 1024, 416,
    (
        (
            Conv(("branch0",), _in(384), (3, 3), _to(_o(0, 384)), stride=2),
            Conv(("branch1.0",), _in(384), (1, 1), _to(_w(0, 192))),
            MaxPool(_in(384), _o(640, 1024)),
        ),
        (Conv(("branch1.1",), _w(0, 192), (3, 3), _to(_w(192, 416)), padding=(1, 1)),),
        (Conv(("branch1.2",), _w(192, 416), (3, 3), _to(_o(384, 640)), stride=2),),
    ),
)

INCEPTION_B = BlockPlan(
    "InceptionB", 1024, 1024, 1376,
    (
        (
            Conv(
                ("branch0", "branch1.0", "branch2.0", "branch3.1"), _in(1024), (1, 1),
                _to(_o(0, 384), _w(0, 384), Write(_w(384, 512), raw=True)),
            ),
        ),
        (
            Conv(("branch1.1",), _w(0, 192), (1, 7), _to(_w(512, 736)), padding=(0, 3)),
            Conv(("branch2.1",), _w(192, 384), (7, 1), _to(_w(736, 928)), padding=(3, 0)),
            AvgPoolBiasRelu("branch3.1", _w(384, 512), _o(896, 1024)),
        ),
        (
            Conv(("branch1.2",), _w(512, 736), (7, 1), _to(_o(384, 640)), padding=(3, 0)),
            Conv(("branch2.2",), _w(736, 928), (1, 7), _to(_w(928, 1152)), padding=(0, 3)),
        ),
        (Conv(("branch2.3",), _w(928, 1152), (7, 1), _to(_w(1152, 1376)), padding=(3, 0)),),
        (Conv(("branch2.4",), _w(1152, 1376), (1, 7), _to(_o(640, 896)), padding=(0, 3)),),
    ),
)

REDUCTION_B = BlockPlan(
    "ReductionB", 1024, 1536, 1024,
    (
        (
            Conv(("branch0.0", "branch1.0"), _in(1024), (1, 1), _to(_w(0, 448))),
            MaxPool(_in(1024), _o(512, 1536)),
        ),
        (
            Conv(("branch0.1",), _w(0, 192), (3, 3), _to(_o(0, 192)), stride=2),
            Conv(("branch1.1",), _w(192, 448), (1, 7), _to(_w(448, 704)), padding=(0, 3)),
        ),
        (Conv(("branch1.2",), _w(448, 704), (7, 1), _to(_w(704, 1024)), padding=(3, 0)),),
        (Conv(("branch1.3",), _w(704, 1024), (3, 3), _to(_o(192, 512)), stride=2),),
    ),
)

INCEPTION_C = BlockPlan(
    "InceptionC", 1536, 1536, 1984,
    (
        (
            Conv(
                ("branch0", "branch1_0", "branch2_0", "branch3.1"), _in(1536), (1, 1),
                _to(_o(0, 256), _w(0, 768), Write(_w(768, 1024), raw=True)),
            ),
        ),
        (
            Conv(("branch1_1a",), _w(0, 384), (1, 3), _to(_o(256, 512)), padding=(0, 1)),
            Conv(("branch1_1b",), _w(0, 384), (3, 1), _to(_o(512, 768)), padding=(1, 0)),
            Conv(("branch2_1",), _w(384, 768), (3, 1), _to(_w(1024, 1472)), padding=(1, 0)),
            AvgPoolBiasRelu("branch3.1", _w(768, 1024), _o(1280, 1536)),
        ),
        (Conv(("branch2_2",), _w(1024, 1472), (1, 3), _to(_w(1472, 1984)), padding=(0, 1)),),
        (
            Conv(("branch2_3a",), _w(1472, 1984), (1, 3), _to(_o(768, 1024)), padding=(0, 1)),
            Conv(("branch2_3b",), _w(1472, 1984), (3, 1), _to(_o(1024, 1280)), padding=(1, 0)),
        ),
    ),
)

STEM = (
    conv_bn_relu_plan("Stem0", 3, 32, 3, stride=2),
    conv_bn_relu_plan("Stem1", 32, 32, 3),
    conv_bn_relu_plan("Stem2", 32, 64, 3, padding=1),
)

# The plan of each block of `InceptionV4.features`, by index.
FEATURE_PLANS = (
    *STEM,
    MIXED_3A,
    MIXED_4A,
    MIXED_5A,
    *[INCEPTION_A] * 4,
    REDUCTION_A,
    *[INCEPTION_B] * 7,
    REDUCTION_B,
    *[INCEPTION_C] * 3,
)

PLANS_BY_NAME = {p.name: p for p in FEATURE_PLANS}
