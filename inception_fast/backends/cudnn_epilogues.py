"""cuDNN's fused epilogues for the `torch` backend on a GPU.

In fp16 and bf16, a conv whose every column ends in a ReLU runs as one cuDNN kernel with its
bias, ReLU and (Inception-ResNet) residual add fused in (`cudnn_convolution_relu` /
`_add_relu`): `F.conv2d` with a bias adds it in a second pass, and the ReLU would be a third,
together about doubling a narrow conv's time (the stem's 3x3 convs at batch 256: 0.96 against
0.43 ms on an H100). Those fused ops have no fake implementation, so while torch.compile traces
(and on other tracing tensors) the backend's plain ops run.
"""

from __future__ import annotations

import torch

from ..graphs import outside_capture
from ..plan import OUTPUT, Conv

FUSED_DTYPES = (torch.float16, torch.bfloat16)


def applies(x: torch.Tensor) -> bool:
    """Whether convs on `x` run with their epilogue fused into cuDNN's kernel: plain CUDA tensors
    in fp16 or bf16, cuDNN on, nothing tracing. fp32 keeps the plain ops: on an H100 (cuDNN 9.19)
    the fused kernels' fp32 results carried TF32-sized errors (2.6e-4 relative) where F.conv2d's
    were exact, with TF32 allowed or not."""
    return (
        x.is_cuda and type(x) is torch.Tensor and x.dtype in FUSED_DTYPES
        and not torch.compiler.is_compiling() and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
    )


def fusable(op: Conv) -> bool:
    """Every column ends in a ReLU (the avg-pool rewrite's columns do not: their pool adds the
    bias and applies it), and a residual add, if any, covers the conv's only write."""
    if not all(write.relu for write in op.writes):
        return False
    return not any(write.residual for write in op.writes) or len(op.writes) == 1


def whole_output_conv(plan) -> int | None:
    """The index of the fusable conv whose one write is the whole block output, if there is one:
    its result can be the output, without a copy."""
    for i, op in enumerate(plan.ops):
        if isinstance(op, Conv) and len(op.writes) == 1 and fusable(op):
            dst = op.writes[0].dst
            if dst.buffer == OUTPUT and dst.start == 0 and dst.stop == plan.out_channels:
                return i
    return None


def conv_relu(x, weight, bias, stride, padding):
    """cuDNN's conv + bias + ReLU in one kernel."""
    return torch.ops.aten.cudnn_convolution_relu(x, weight, bias, stride, padding, (1, 1), 1)


def conv_add_relu(x, weight, residual, bias, stride, padding):
    """cuDNN's relu(conv + residual + bias) in one kernel."""
    return torch.ops.aten.cudnn_convolution_add_relu(
        x, weight, residual, 1.0, bias, stride, padding, (1, 1), 1,
    )


def _channels_last_weight(block, i: int, weight: torch.Tensor) -> torch.Tensor:
    """The conv's weight stored as cuDNN reads it beside channels_last activations (made once: a
    copy per call would be a kernel per conv)."""
    kept = block.backend_cache.setdefault("torch-weights", {})
    w = kept.get(i)
    if w is None:
        outside_capture(weight.device, f"{block.plan.label}: laying out the torch backend's weights")
        w = kept[i] = weight.contiguous(memory_format=torch.channels_last)
    return w


def run_conv(block, i: int, op: Conv, src, x, weight, bias) -> torch.Tensor | None:
    """Conv op `i` of `block` (a `fusable` one, its folded `weight` and `bias`) on `src` with its
    epilogue applied, residuals read from the block input `x`; None where cuDNN has no fused
    kernel for it (remembered per block and conv: the plain ops run it then)."""
    unfused = block.backend_cache.setdefault("torch-unfused", set())
    if i in unfused:
        return None
    weight = _channels_last_weight(block, i, weight)
    stride, padding = (op.stride, op.stride), tuple(op.padding)
    write = op.writes[0]
    try:
        if write.residual:
            residual = x[:, write.dst.start : write.dst.stop]
            return conv_add_relu(src, weight, residual, bias, stride, padding)
        return conv_relu(src, weight, bias, stride, padding)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:  # no fused engine for this shape in this cuDNN
        unfused.add(i)
        return None
