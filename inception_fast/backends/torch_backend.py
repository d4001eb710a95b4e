"""The `torch` backend: the block plan executed with PyTorch ops on folded weights.

It is the CPU path and the executable specification of the kernels: same stages, same stacked
GEMMs, same avg-pool rewrite, every result copied straight into its slice of one preallocated
output (no torch.cat). Works in any dtype PyTorch supports on the device; on a GPU its convs
are cuDNN's, which makes it the library path that `auto` weighs against the kernels.

On a GPU in fp16 and bf16 the convs that end in a ReLU run with their epilogue inside cuDNN's
kernel (`cudnn_epilogues`), and such a conv that writes the whole block output returns its result
as the output, without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plan import AVG_INCLUDE_PAD, INPUT, MAX, OUTPUT, WORK, Conv, GlobalAvgPool, Pool
from . import cudnn_epilogues

name = "torch"


def availability(device=None) -> tuple[bool, str]:
    return True, "always available (PyTorch ops)"


def _slice(buffers, s):
    return buffers[s.buffer][:, s.start : s.stop]


def _pool(op: Pool, src: torch.Tensor) -> torch.Tensor:
    if op.kind == MAX:
        return F.max_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
    return F.avg_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode,
                        count_include_pad=op.kind == AVG_INCLUDE_PAD)


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    plan = block.plan
    n, _, h, w = x.shape
    oh, ow = block.output_hw(h, w)
    fused = cudnn_epilogues.applies(x)
    fmt = torch.channels_last if x.is_cuda else torch.contiguous_format
    new = dict(dtype=x.dtype, device=x.device, memory_format=fmt)
    buffers = {INPUT: x}
    whole = cudnn_epilogues.whole_output_conv(plan) if fused else None
    if whole is None:
        buffers[OUTPUT] = torch.empty((n, plan.out_channels, oh, ow), **new)
    if plan.work_channels:
        buffers[WORK] = torch.empty((n, plan.work_channels, h, w), **new)
    for i, op in enumerate(plan.ops):
        weight, bias = block.op_params(i)
        src = _slice(buffers, op.src)
        if isinstance(op, Conv):
            y = None
            if fused and cudnn_epilogues.fusable(op):
                y = cudnn_epilogues.run_conv(block, i, op, src, x, weight, bias)
            applied = y is not None  # bias, residual and ReLU ran inside cuDNN's kernel
            if applied and i == whole:
                buffers[OUTPUT] = y.contiguous(memory_format=torch.channels_last)
                continue
            if OUTPUT not in buffers:  # the whole-output conv found no fused kernel
                buffers[OUTPUT] = torch.empty((n, plan.out_channels, oh, ow), **new)
            if not applied:
                y = F.conv2d(src, weight, bias, op.stride, op.padding)
            col = 0
            for write in op.writes:
                part = y[:, col : col + write.dst.channels]
                if not applied and write.residual:
                    part = part + x[:, write.dst.start : write.dst.stop]
                if not applied and write.relu:
                    part = torch.relu(part)
                _slice(buffers, write.dst).copy_(part)
                col += write.dst.channels
        elif isinstance(op, Pool):
            y = _pool(op, src)
            if bias is not None:
                y = y + bias[:, None, None]
            _slice(buffers, op.dst).copy_(torch.relu(y) if op.relu else y)
        elif isinstance(op, GlobalAvgPool):
            _slice(buffers, op.dst).copy_(src.mean((2, 3), keepdim=True))
        else:
            raise TypeError(f"unknown plan op {type(op).__name__}")
    return buffers[OUTPUT]
