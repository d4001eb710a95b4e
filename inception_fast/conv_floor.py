"""The library floor: every convolution of a network timed alone in the vendor library, summed
per block and for the whole network ("cuDNN convs alone").

What a fused implementation must beat conv for conv: each `nn.Conv2d` the network runs (found
by `layer_census`, at the input shape it really sees) is timed as a bare `F.conv2d` in the run's
dtype, channels_last on a GPU, with `torch.backends.cudnn.benchmark = True` (cuDNN picks its
fastest algorithm per shape). No BatchNorm, activation, pool, concat or launch gaps: the sum is
a floor for the convolutions of the network as the library runs them, not an achievable model
time. Timing goes through `inception_fast.timing` (CUDA events, L2 flushed, inputs rotated,
median); a shape that occurs several times (repeated blocks) is timed once and counted each time.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import timing
from .layer_census import ConvShape, LayerCall

INPUT_SETS = 2  # rotated between timed calls, as for the whole model


@dataclass(frozen=True)
class BlockFloor:
    block: str  # the block's path in the network, e.g. "features.4"
    label: str  # path and class names, e.g. "features.4 Mixed4a"
    convs: int
    macs: int  # per image, convolutions only
    ms: float  # sum of the block's convs, each timed alone


@dataclass(frozen=True)
class ConvFloor:
    batch: int
    dtype: str
    device: str
    total_ms: float
    macs: int  # per image, every conv of the network
    blocks: list[BlockFloor]
    shapes: list[dict]  # each distinct conv shape: its timing and how often the network runs it

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool = True):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def time_conv(shape: ConvShape, batch: int, dtype: torch.dtype, device, budget_ms: float) -> timing.Timing:
    """One convolution alone: F.conv2d on random data of its real shape."""
    device = torch.device(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    inputs = [
        torch.randn(batch, shape.in_channels, shape.height, shape.width, device=device, dtype=dtype)
        .contiguous(memory_format=fmt) for _ in range(INPUT_SETS)
    ]
    weight = torch.randn(
        shape.out_channels, shape.in_channels // shape.groups, *shape.kernel, device=device, dtype=dtype,
    ).contiguous(memory_format=fmt) * 0.05
    bias = torch.randn(shape.out_channels, device=device, dtype=dtype) if shape.bias else None

    def conv(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, shape.stride, shape.padding, shape.dilation, shape.groups)

    conv(inputs[0])  # cuDNN's algorithm search for this shape, outside the timed calls
    timing.synchronize(device)
    return timing.time_callable(conv, inputs, budget_ms=budget_ms, warmup_ms=20.0)


def block_labels(source: torch.nn.Module, fused: torch.nn.Module | None, block_paths: list[str]) -> dict:
    """"features.4 Mixed4a", with the number of stages of the fused block made from the same
    path ("features.4 Mixed4a -> 4 stages"), so the floor reads next to the fused blocks."""
    fused_at = {block.plan.path: block for block in getattr(fused, "blocks", [])}
    labels = {}
    for path in block_paths:
        label = f"{path} {type(source.get_submodule(path)).__name__}" if path else type(source).__name__
        if path in fused_at:
            label += f" -> {len(fused_at[path].plan.stages)} stages"
        labels[path] = label
    return labels


@torch.inference_mode()
def conv_floor(
    calls: list[LayerCall], batch: int, dtype: torch.dtype, device, *, labels: dict | None = None,
    budget_ms: float = 50.0, dtype_name: str | None = None,
) -> ConvFloor:
    """Time every distinct convolution of `calls` (from `layer_census.census`) at `batch` and
    sum them per block, in the order the network runs its blocks. TF32 follows the caller's
    torch.backends settings (see inception_fast.bench.tf32)."""
    convs = [call for call in calls if call.kind == "conv"]
    counts = Counter(call.conv for call in convs)
    measured = {}
    with cudnn_benchmark(True):
        for shape in counts:
            measured[shape] = time_conv(shape, batch, dtype, device, budget_ms)
    blocks: dict[str, list[LayerCall]] = {}
    for call in convs:
        blocks.setdefault(call.block, []).append(call)
    block_rows = [
        BlockFloor(
            block, (labels or {}).get(block, block), len(members), sum(c.macs for c in members),
            sum(measured[c.conv].median_ms for c in members),
        )
        for block, members in blocks.items()
    ]
    shapes = [
        {**asdict(shape), "count": count, **measured[shape].as_dict(),
         "macs": next(c.macs for c in convs if c.conv == shape)}
        for shape, count in counts.items()
    ]
    return ConvFloor(
        batch, dtype_name or str(dtype).removeprefix("torch."), str(device),
        sum(b.ms for b in block_rows), sum(c.macs for c in convs), block_rows, shapes,
    )


def floor_label(device) -> str:
    """What the floor is called in tables: cuDNN on a GPU; on the CPU, PyTorch's own conv."""
    return "cuDNN convs alone" if torch.device(device).type == "cuda" else "convs alone (F.conv2d, CPU)"
