"""The `torch` backend: the block plan executed with PyTorch ops on folded weights.

It is the CPU path and the executable specification of the kernels: same stages, same stacked
GEMMs, same avg-pool rewrite, every result copied straight into its slice of one preallocated
output (no torch.cat). Works in any dtype PyTorch supports on the device; on a GPU its convs
are cuDNN's, which makes it the library path that `auto` weighs against the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plan import AVG_INCLUDE_PAD, INPUT, MAX, OUTPUT, WORK, Conv, GlobalAvgPool, Pool

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
    fmt = torch.channels_last if x.is_cuda else torch.contiguous_format
    new = dict(dtype=x.dtype, device=x.device, memory_format=fmt)
    buffers = {INPUT: x, OUTPUT: torch.empty((n, plan.out_channels, oh, ow), **new)}
    if plan.work_channels:
        buffers[WORK] = torch.empty((n, plan.work_channels, h, w), **new)
    for i, op in enumerate(plan.ops):
        weight, bias = block.op_params(i)
        src = _slice(buffers, op.src)
        if isinstance(op, Conv):
            y = F.conv2d(src, weight, bias, op.stride, op.padding)
            col = 0
            for write in op.writes:
                part = y[:, col : col + write.dst.channels]
                if write.residual:
                    part = part + x[:, write.dst.start : write.dst.stop]
                _slice(buffers, write.dst).copy_(torch.relu(part) if write.relu else part)
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
