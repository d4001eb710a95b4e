"""The `torch` backend: the block plan executed with PyTorch ops on folded weights.

It is the CPU path and the executable specification of the kernels: same stages, same stacked
stage-1 GEMM, same avg-pool rewrite, every result copied straight into its slice of one
preallocated output (no torch.cat). Works in any dtype PyTorch supports on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plan import INPUT, OUTPUT, WORK, AvgPoolBiasRelu, Conv, MaxPool


def availability(device=None) -> tuple[bool, str]:
    return True, "always available (PyTorch ops)"


def _slice(buffers, s):
    return buffers[s.buffer][:, s.start : s.stop]


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
                _slice(buffers, write.dst).copy_(part if write.raw else torch.relu(part))
                col += write.dst.channels
        elif isinstance(op, AvgPoolBiasRelu):
            pooled = F.avg_pool2d(src, op.kernel, op.stride, op.padding, count_include_pad=False)
            _slice(buffers, op.dst).copy_(torch.relu(pooled + bias[:, None, None]))
        elif isinstance(op, MaxPool):
            _slice(buffers, op.dst).copy_(F.max_pool2d(src, op.kernel, op.stride, op.padding))
        else:
            raise TypeError(f"unknown plan op {type(op).__name__}")
    return buffers[OUTPUT]


def run_head(head, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.mean((2, 3)), head.weight, head.bias)
