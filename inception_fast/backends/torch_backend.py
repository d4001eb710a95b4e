"""The `torch` backend: the block plan executed with PyTorch ops on folded weights.

It is the CPU path and the executable specification of the kernels: same stages, same stacked
GEMMs, same avg-pool rewrite, every result copied straight into its slice of one preallocated
output (no torch.cat). Works in any dtype PyTorch supports on the device; on a GPU its convs
are cuDNN's, which makes it the library path that `auto` weighs against the kernels.

On a GPU in fp16 and bf16, a conv whose every column ends in a ReLU runs as one cuDNN kernel
with its bias, ReLU and (Inception-ResNet) residual add fused in (`cudnn_convolution_relu` /
`_add_relu`): `F.conv2d` with a bias adds it in a second pass, and the ReLU would be a third,
together about doubling a narrow conv's time (the stem's 3x3 convs at batch 256: 0.96 against
0.43 ms on an H100). A conv that writes the whole block output returns its result as the
output, without a copy. Those fused ops have no fake implementation, so while torch.compile
traces (and on other tracing tensors) the plain ops run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..graphs import outside_capture
from ..plan import AVG_INCLUDE_PAD, INPUT, MAX, OUTPUT, WORK, Conv, GlobalAvgPool, Pool

name = "torch"
FUSED_DTYPES = (torch.float16, torch.bfloat16)


def availability(device=None) -> tuple[bool, str]:
    return True, "always available (PyTorch ops)"


def _slice(buffers, s):
    return buffers[s.buffer][:, s.start : s.stop]


def _pool(op: Pool, src: torch.Tensor) -> torch.Tensor:
    if op.kind == MAX:
        return F.max_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
    return F.avg_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode,
                        count_include_pad=op.kind == AVG_INCLUDE_PAD)


def fuses_epilogues(x: torch.Tensor) -> bool:
    """Whether convs on `x` run with their epilogue fused into cuDNN's kernel: plain CUDA tensors
    in fp16 or bf16, cuDNN on, nothing tracing. fp32 keeps the plain ops: on an H100 (cuDNN 9.19)
    the fused kernels' fp32 results carried TF32-sized errors (2.6e-4 relative) where F.conv2d's
    were exact, with TF32 allowed or not."""
    return (
        x.is_cuda and type(x) is torch.Tensor and x.dtype in FUSED_DTYPES
        and not torch.compiler.is_compiling() and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
    )


def _fusable(op: Conv) -> bool:
    """Every column ends in a ReLU (the avg-pool rewrite's columns do not: their pool adds the
    bias and applies it), and a residual add, if any, covers the conv's only write."""
    if not all(write.relu for write in op.writes):
        return False
    return not any(write.residual for write in op.writes) or len(op.writes) == 1


def _channels_last_weight(block, i: int, weight: torch.Tensor) -> torch.Tensor:
    """The conv's weight stored as cuDNN reads it beside channels_last activations (made once: a
    copy per call would be a kernel per conv)."""
    kept = block.backend_cache.setdefault("torch-weights", {})
    w = kept.get(i)
    if w is None:
        outside_capture(weight.device, f"{block.plan.label}: laying out the torch backend's weights")
        w = kept[i] = weight.contiguous(memory_format=torch.channels_last)
    return w


def conv_relu(x, weight, bias, stride, padding):
    """cuDNN's conv + bias + ReLU in one kernel."""
    return torch.ops.aten.cudnn_convolution_relu(x, weight, bias, stride, padding, (1, 1), 1)


def conv_add_relu(x, weight, residual, bias, stride, padding):
    """cuDNN's relu(conv + residual + bias) in one kernel."""
    return torch.ops.aten.cudnn_convolution_add_relu(
        x, weight, residual, 1.0, bias, stride, padding, (1, 1), 1,
    )


def _whole_output_conv(plan) -> int | None:
    """The index of the conv whose one write is the whole block output, if there is one."""
    for i, op in enumerate(plan.ops):
        if isinstance(op, Conv) and len(op.writes) == 1:
            dst = op.writes[0].dst
            if dst.buffer == OUTPUT and dst.start == 0 and dst.stop == plan.out_channels:
                return i
    return None


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    plan = block.plan
    n, _, h, w = x.shape
    oh, ow = block.output_hw(h, w)
    fused = fuses_epilogues(x)
    fmt = torch.channels_last if x.is_cuda else torch.contiguous_format
    new = dict(dtype=x.dtype, device=x.device, memory_format=fmt)
    buffers = {INPUT: x}
    whole = _whole_output_conv(plan) if fused else None
    if whole is None or not _fusable(plan.ops[whole]):
        whole = None
        buffers[OUTPUT] = torch.empty((n, plan.out_channels, oh, ow), **new)
    if plan.work_channels:
        buffers[WORK] = torch.empty((n, plan.work_channels, h, w), **new)
    for i, op in enumerate(plan.ops):
        weight, bias = block.op_params(i)
        src = _slice(buffers, op.src)
        if isinstance(op, Conv):
            if fused and _fusable(op) and _fused_conv(block, i, op, src, x, buffers, i == whole):
                continue
            if OUTPUT not in buffers:  # the whole-output conv found no fused kernel
                buffers[OUTPUT] = torch.empty((n, plan.out_channels, oh, ow), **new)
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


def _fused_conv(block, i, op: Conv, src, x, buffers, is_output: bool) -> bool:
    """One conv of a `_fusable` op with its epilogue in cuDNN's kernel, its columns then copied
    to their slices (or, for the conv that is the whole output, kept as the output). False,
    with nothing written, where cuDNN has no fused kernel for the conv (remembered per block):
    the plain ops run it then."""
    unfused = block.backend_cache.setdefault("torch-unfused", set())
    if i in unfused:
        return False
    weight, bias = block.op_params(i)
    weight = _channels_last_weight(block, i, weight)
    padding = tuple(op.padding)
    stride = (op.stride, op.stride)
    write = op.writes[0]
    try:
        if write.residual:
            residual = x[:, write.dst.start : write.dst.stop]
            y = conv_add_relu(src, weight, residual, bias, stride, padding)
        else:
            y = conv_relu(src, weight, bias, stride, padding)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:  # no fused engine for this shape in this cuDNN
        unfused.add(i)
        return False
    if is_output:
        buffers[OUTPUT] = y.contiguous(memory_format=torch.channels_last)
        return True
    col = 0
    for write in op.writes:
        _slice(buffers, write.dst).copy_(y[:, col : col + write.dst.channels])
        col += write.dst.channels
    return True
