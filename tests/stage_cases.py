"""Hand-built packed stages for the ops the two kernel backends share beyond Inception-v4:
ceil-mode pools, the include-pad average pool, the residual epilogue and windows from 1x1 to
7x7, each with the same computation written with PyTorch ops. The Triton interpreter tests,
the CUDA-kernel emulation and the GPU tests of both backends run these same cases.

Parameters and inputs are float32 values held in float64, so packing them in fp32 or float64
is exact and a float64 run can match the PyTorch ops to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inception_fast import packing as pk
from inception_fast.windows import out_size

OUT, WORK = pk.FLAG_TO_OUTPUT, 0
RELU, RESIDUAL = pk.FLAG_RELU, pk.FLAG_RESIDUAL


@dataclass
class StageSpec:
    """The host-side lists of `packing.make_stage`; conv weights float64 [COLS, KH, KW, CIN]."""

    rows: list
    weights: list
    biases: list
    dsts: list
    flags: list

    def packed(self, device, dtype, in_channels: int) -> pk.PackedStage:
        weights = [w.reshape(-1) for w in self.weights]
        return pk.make_stage(self.rows, weights, self.biases, self.dsts, self.flags, device, dtype,
                             in_channels=in_channels)


@dataclass
class StageCase:
    x: torch.Tensor  # float64 NCHW input of `in_channels` real channels, zero-padded to a multiple of 8
    in_channels: int
    stages: list  # StageSpec per launch, in order
    out_channels: int
    out_hw: tuple
    work_channels: int  # 0: no work buffer
    torch_ops: Callable  # the block's result with PyTorch ops, in the dtype and device of its input

    def packed(self, device, dtype) -> list:
        return [s.packed(device, dtype, self.in_channels) for s in self.stages]

    def expected(self) -> torch.Tensor:
        """The float64 result of the PyTorch ops."""
        return self.torch_ops(self.x)


def _values(*shape, gen, scale=1.0) -> torch.Tensor:
    """float32 values in float64 (exact in either)."""
    return (torch.randn(*shape, generator=gen) * scale).float().double()


def _conv_row(cin, cols, kernel, stride, pad, w_off, col_off, src_buf=pk.BUF_INPUT, src_c0=0):
    return [pk.CONV, src_buf, src_c0, cin, cols, *kernel, stride, *pad, w_off, col_off, 0]


def _pool_row(kind, channels, kernel, stride, pad, col_off, ceil=0, src_buf=pk.BUF_INPUT, src_c0=0):
    return [kind, src_buf, src_c0, channels, channels, kernel, kernel, stride, pad, pad, -1, col_off, ceil]


def _pool_case(kind, n, c, h, w, kernel, stride, pad, ceil, gen, relu):
    """One pool problem over the whole input, its columns to the output in reversed 8-channel
    groups (destinations are data, not the identity)."""
    x = _values(n, c, h, w, gen=gen)
    bias = _values(c, gen=gen, scale=0.5) if kind != pk.MAX_POOL else torch.zeros(c, dtype=torch.float64)
    groups = list(reversed(range(c // 8)))
    dsts = [8 * g + i for g in groups for i in range(8)]
    flags = [OUT | (RELU if relu else 0)] * c
    ceil_mode = bool(ceil)

    def torch_ops(x):
        if kind == pk.MAX_POOL:
            y = F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode)
        else:
            y = F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode,
                             count_include_pad=kind == pk.AVG_POOL_INCLUDE_PAD)
        y = y + bias.to(x)[None, :, None, None]
        y = y.relu() if relu else y
        out = torch.empty_like(y)
        out[:, dsts] = y
        return out

    oh = out_size(h, kernel, stride, pad, ceil_mode)
    ow = out_size(w, kernel, stride, pad, ceil_mode)
    stage = StageSpec([_pool_row(kind, c, kernel, stride, pad, 0, ceil)], [], [bias.float()], dsts, flags)
    return StageCase(x, c, [stage], c, (oh, ow), 0, torch_ops)


def maxpool_ceil_s2(gen, n=3, c=16, h=8, w=10):
    """GoogLeNet's MaxPool(3, 2, ceil_mode=True): 8x10 -> 4x5 (floor mode: 3x4). Inputs of both
    signs, so a tap past the input that read 0 instead of -inf would show."""
    return _pool_case(pk.MAX_POOL, n, c, h, w, 3, 2, 0, 1, gen, relu=False)


def maxpool_ceil_last_window_dropped(gen, n=1, c=8, h=5, w=7):
    """MaxPool(2, 2, padding 1, ceil_mode=True) on 5x7: the ceil count (4x5) has a last window
    that starts in the right padding, which PyTorch drops: 3x4."""
    return _pool_case(pk.MAX_POOL, n, c, h, w, 2, 2, 1, 1, gen, relu=False)


def maxpool_ceil_s1(gen, n=2, c=16, h=5, w=6):
    """GoogLeNet's MaxPool(3, 1, padding 1, ceil_mode=True) (stride 1: ceil keeps the size)."""
    return _pool_case(pk.MAX_POOL, n, c, h, w, 3, 1, 1, 1, gen, relu=False)


def avgpool_ceil_s2(gen, n=2, c=16, h=6, w=9):
    """AvgPool(3, 2, padding 1, ceil_mode=True, count_include_pad=False) + bias + ReLU: the edge
    windows run past the input and divide by their in-image taps."""
    return _pool_case(pk.AVG_POOL, n, c, h, w, 3, 2, 1, 1, gen, relu=True)


def avgpool_include_pad(gen, n=3, c=16, h=5, w=6):
    """AvgPool(3, 1, 1) with count_include_pad=True (torchvision's Inception-v3) + bias + ReLU."""
    return _pool_case(pk.AVG_POOL_INCLUDE_PAD, n, c, h, w, 3, 1, 1, 0, gen, relu=True)


def three_pools_s1(gen, n=2, c=16, h=6, w=5):
    """Max, exclude-pad average and include-pad average 3x3 stride 1 pad 1 in one stage, each
    to its own output slice; the averages add a bias, the include-pad one applies ReLU."""
    x = _values(n, c, h, w, gen=gen)
    kinds = (pk.MAX_POOL, pk.AVG_POOL, pk.AVG_POOL_INCLUDE_PAD)
    biases = [torch.zeros(c, dtype=torch.float64), _values(c, gen=gen), _values(c, gen=gen)]
    relu = (False, False, True)
    rows, dsts, flags = [], [], []
    for p, kind in enumerate(kinds):
        rows.append(_pool_row(kind, c, 3, 1, 1, p * c))
        dsts += [p * c + i for i in range(c)]
        flags += [OUT | (RELU if relu[p] else 0)] * c

    def torch_ops(x):
        ys = [F.max_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
              F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)]
        ys = [y + b.to(x)[None, :, None, None] for y, b in zip(ys, biases)]
        return torch.cat([y.relu() if r else y for y, r in zip(ys, relu)], 1)

    stage = StageSpec(rows, [], [b.float() for b in biases], dsts, flags)
    return StageCase(x, c, [stage], 3 * c, (h, w), 0, torch_ops)


def avgpool_rewrite(gen, n=2, c=16, h=5, w=7, cols=8):
    """The exact avg-pool/1x1-conv rewrite of Inception-v3's pool branch, as two launches: the
    1x1 conv without bias into the work buffer, then the include-pad pool adds the bias and
    applies ReLU. PyTorch: relu(conv1x1(avg_pool(x, count_include_pad=True)) + b)."""
    x = _values(n, c, h, w, gen=gen)
    weight = _values(cols, 1, 1, c, gen=gen, scale=c**-0.5)
    bias = _values(cols, gen=gen, scale=0.5)
    conv = StageSpec([_conv_row(c, cols, (1, 1), 1, (0, 0), 0, 0)], [weight],
                     [torch.zeros(cols)], list(range(cols)), [WORK] * cols)
    pool = StageSpec([_pool_row(pk.AVG_POOL_INCLUDE_PAD, cols, 3, 1, 1, 0, src_buf=pk.BUF_WORK)], [],
                     [bias.float()], list(range(cols)), [OUT | RELU] * cols)

    def torch_ops(x):
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
        return F.conv2d(pooled, weight.to(x).permute(0, 3, 1, 2), bias.to(x)).relu()

    return StageCase(x, c, [conv, pool], cols, (h, w), cols, torch_ops)


def _conv_case(gen, n, cin, h, w, specs, real_cin=None):
    """One stage of convs that all read the whole input and write consecutive output slices.
    specs: (cols, (kh, kw), stride, (ph, pw), flags) per conv. With RESIDUAL flags, column j
    adds input channel j of its slice's destination. `real_cin`: channels of the image, the
    rest of the input zero (the 3-channel image padded to 8) with zero weights there."""
    real_cin = real_cin or cin
    x = _values(n, cin, h, w, gen=gen)
    x[:, real_cin:] = 0
    rows, weights, biases, dsts, flags, convs = [], [], [], [], [], []
    w_off = col_off = 0
    for cols, (kh, kw), stride, pad, col_flags in specs:
        weight = _values(cols, kh, kw, cin, gen=gen, scale=(kh * kw * real_cin) ** -0.5)
        weight[..., real_cin:] = 0
        bias = _values(cols, gen=gen, scale=0.5)
        rows.append(_conv_row(cin, cols, (kh, kw), stride, pad, w_off, col_off))
        weights.append(weight)
        biases.append(bias.float())
        dsts += [col_off + i for i in range(cols)]
        flags += [OUT | col_flags] * cols
        convs.append((weight, bias, stride, pad, col_flags))
        w_off += weight.numel()
        col_off += cols

    def torch_ops(x):
        outs = []
        for weight, bias, stride, pad, _ in convs:
            y = F.conv2d(x[:, :real_cin], weight[..., :real_cin].to(x).permute(0, 3, 1, 2), bias.to(x),
                         stride=stride, padding=pad)
            outs.append(y)
        out = torch.cat(outs, 1)
        col = 0
        for y, (*_, col_flags) in zip(outs, convs):
            sl = slice(col, col + y.shape[1])
            if col_flags & RESIDUAL:
                out[:, sl] = out[:, sl] + x[:, sl]
            if col_flags & RELU:
                out[:, sl] = out[:, sl].relu()
            col += y.shape[1]
        return out

    cols, (kh, kw), stride, pad, _ = specs[0]
    oh, ow = out_size(h, kh, stride, pad[0]), out_size(w, kw, stride, pad[1])
    stage = StageSpec(rows, weights, biases, dsts, flags)
    return StageCase(x, real_cin, [stage], col_off, (oh, ow), 0, torch_ops)


def residual_relu(gen, n=3, c=16, h=5, w=4):
    """Inception-ResNet's relu(conv1x1(x) * scale + x), the scale folded into the weights."""
    return _conv_case(gen, n, c, h, w, [(c, (1, 1), 1, (0, 0), RESIDUAL | RELU)])


def residual_mixed_columns(gen, n=2, c=16, h=4, w=5):
    """One 1x1 conv problem whose first 16 columns add the residual (no ReLU) and whose last 8
    do not (ReLU): flags per column, not per problem."""
    x = _values(n, c, h, w, gen=gen)
    weight = _values(24, 1, 1, c, gen=gen, scale=c**-0.5)
    bias = _values(24, gen=gen, scale=0.5)
    flags = [OUT | RESIDUAL] * 16 + [OUT | RELU] * 8
    stage = StageSpec([_conv_row(c, 24, (1, 1), 1, (0, 0), 0, 0)], [weight], [bias.float()],
                      list(range(24)), flags)

    def torch_ops(x):
        y = F.conv2d(x, weight.to(x).permute(0, 3, 1, 2), bias.to(x))
        return torch.cat([y[:, :16] + x[:, :16], y[:, 16:].relu()], 1)

    return StageCase(x, c, [stage], 24, (h, w), 0, torch_ops)


def residual_3x3_no_relu(gen, n=1, c=16, h=6, w=5):
    """A residual conv whose window is wider than 1x1 (3x3 pad 1 keeps the size), no ReLU."""
    return _conv_case(gen, n, c, h, w, [(c, (3, 3), 1, (1, 1), RESIDUAL)])


def conv5x5_pad2(gen, n=2, c=16, h=7, w=6, cols=16):
    return _conv_case(gen, n, c, h, w, [(cols, (5, 5), 1, (2, 2), RELU)])


def conv7x7_s2_pad3_rgb(gen, n=2, h=11, w=9, cols=16):
    """GoogLeNet's first conv: 7x7 stride 2 pad 3 on the 3-channel image padded to 8."""
    return _conv_case(gen, n, 8, h, w, [(cols, (7, 7), 2, (3, 3), RELU)], real_cin=3)


def asymmetric_windows(gen, n=1, c=16, h=8, w=7):
    """1x7, 7x1, 1x3 and 3x1 (Inception-v3's factorized convs) side by side in one stage."""
    specs = [(8, (1, 7), 1, (0, 3), RELU), (8, (7, 1), 1, (3, 0), RELU),
             (8, (1, 3), 1, (0, 1), RELU), (8, (3, 1), 1, (1, 0), 0)]
    return _conv_case(gen, n, c, h, w, specs)


CASES = {
    f.__name__: f
    for f in (
        maxpool_ceil_s2, maxpool_ceil_last_window_dropped, maxpool_ceil_s1, avgpool_ceil_s2,
        avgpool_include_pad, three_pools_s1, avgpool_rewrite, residual_relu, residual_mixed_columns,
        residual_3x3_no_relu, conv5x5_pad2, conv7x7_s2_pad3_rgb, asymmetric_windows,
    )
}
# Network-like sizes for the GPU: several pixel tiles, column tails, channel groups > 1.
GPU_SIZES = {
    "maxpool_ceil_s2": dict(n=5, c=192, h=57, w=57),
    "maxpool_ceil_last_window_dropped": dict(n=3, c=64, h=29, w=31),
    "maxpool_ceil_s1": dict(n=3, c=480, h=14, w=14),
    "avgpool_ceil_s2": dict(n=3, c=64, h=28, w=29),
    "avgpool_include_pad": dict(n=5, c=192, h=35, w=35),
    "three_pools_s1": dict(n=3, c=64, h=17, w=17),
    "avgpool_rewrite": dict(n=3, c=288, h=35, w=35, cols=64),
    "residual_relu": dict(n=5, c=320, h=35, w=35),
    "residual_mixed_columns": dict(n=3, c=16, h=35, w=33),
    "residual_3x3_no_relu": dict(n=3, c=136, h=17, w=17),
    "conv5x5_pad2": dict(n=3, c=48, h=35, w=35, cols=64),
    "conv7x7_s2_pad3_rgb": dict(n=3, h=224, w=224, cols=64),
    "asymmetric_windows": dict(n=3, c=128, h=17, w=17),
}


def make_case(name: str, seed: int = 0, gpu_size: bool = False) -> StageCase:
    gen = torch.Generator().manual_seed(seed)
    return CASES[name](gen, **(GPU_SIZES[name] if gpu_size else {}))


def kernel_buffers(case: StageCase, dtype, device):
    """(input, work, output) in the kernels' layout: NCHW shapes stored channels_last, the
    output and work NaN-poisoned so that a channel never written shows."""
    x = case.x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    n, _, h, w = x.shape
    nan = float("nan")
    out = torch.full((n, case.out_channels, *case.out_hw), nan, dtype=dtype, device=device)
    work = torch.full((n, max(case.work_channels, 8), h, w), nan, dtype=dtype, device=device)
    layout = torch.channels_last
    return x, work.contiguous(memory_format=layout), out.contiguous(memory_format=layout)
