"""Every Conv2d and Linear a network runs, with its input shape and its work, found with forward
hooks during one forward pass: the same count for any network, nothing written down by hand.

Used by the benchmarks for the FLOPs per image of each model (2 x the multiply-accumulates of
its convolutions and Linear layers; pools, BatchNorm and activations are a rounding error) and
for the library floor (`inception_fast.conv_floor`), which times each convolution at the shape
it really sees. The pass runs on the "meta" device where every op has a meta kernel (shapes
only, no arithmetic), so even a large network is counted in milliseconds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class ConvShape:
    """One convolution's problem, per image: what cuDNN is asked to compute (the batch apart)."""

    in_channels: int
    out_channels: int
    height: int  # of the input
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool


@dataclass(frozen=True)
class LayerCall:
    path: str  # the module's name in the network, e.g. "features.4.branch0.0.conv"
    block: str  # the top-level block that holds it, e.g. "features.4" (see `blocks`)
    kind: str  # "conv" or "linear"
    macs: int  # multiply-accumulates per image
    conv: ConvShape | None = None


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's top-level blocks, in order: its children, where a container (Sequential,
    ModuleList, ModuleDict) of blocks, or an only child, stands for the blocks inside it. timm's
    inception_v4 gives features.0 .. features.21 and last_linear; Inception-ResNet-v2 gives its
    repeats one by one (repeat.0 .. repeat.9); pytorch-fid's InceptionV3 gives blocks.0.0 ..;
    a Sequential of plain layers (conv, BatchNorm, ReLU) stays one block."""
    found = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        for name, child in children:
            path = f"{prefix}.{name}" if prefix else name
            of_blocks = isinstance(child, CONTAINERS) and any(_has_children(c) for c in child.children())
            if of_blocks or (len(children) == 1 and _has_children(child)):
                visit(path, child)
            else:
                found.append((path, child))

    visit("", model)
    return found or [("", model)]


def block_of(path: str, block_paths: list[str]) -> str:
    """The block (longest path prefix on a dot boundary) that holds the module at `path`."""
    best = ""
    for block in block_paths:
        if (path == block or path.startswith(block + ".") or block == "") and len(block) >= len(best):
            best = block
    return best


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def census(model: nn.Module, image_size: int | tuple[int, int], *, on_meta: bool = True) -> list[LayerCall]:
    """The Conv2d and Linear calls of one forward pass of a 3-channel image, in call order.

    The pass runs in eval mode with every parameter and buffer swapped for a meta tensor of its
    shape (`torch.func.functional_call`: nothing is copied and `model` keeps its weights, mode
    and device), or, with `on_meta=False`, on a float32 CPU copy. A module called twice is
    listed twice. Raises the network's own error when the image is too small for it."""
    height, width = _pair(image_size)
    if on_meta:
        probe = model
        tensors = {name: torch.empty_like(t, device="meta")
                   for name, t in [*model.named_parameters(), *model.named_buffers()]}
        dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
        image = torch.zeros(1, 3, height, width, device="meta", dtype=dtype)
    else:
        probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
        image = torch.zeros(1, 3, height, width)
    block_paths = [path for path, _ in blocks(probe)]
    calls: list[LayerCall] = []

    def record(path: str):
        def hook(module, inputs, output):
            x = inputs[0]
            per_image = output.numel() // max(x.shape[0], 1)
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = per_image * (module.in_channels // module.groups) * kh * kw
                shape = ConvShape(
                    module.in_channels, module.out_channels, x.shape[-2], x.shape[-1], (kh, kw),
                    _pair(module.stride), module.padding if isinstance(module.padding, str) else
                    _pair(module.padding), _pair(module.dilation), module.groups, module.bias is not None,
                )
                calls.append(LayerCall(path, block_of(path, block_paths), "conv", macs, shape))
            else:
                macs = per_image * module.in_features
                calls.append(LayerCall(path, block_of(path, block_paths), "linear", macs))

        return hook

    modes = {module: module.training for module in probe.modules()}
    handles = [
        module.register_forward_hook(record(path))
        for path, module in probe.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        probe.eval()
        with torch.no_grad():
            if on_meta:
                torch.func.functional_call(probe, tensors, (image,), strict=False)
            else:
                probe(image)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return calls


def macs_per_image(calls: list[LayerCall]) -> int:
    return sum(call.macs for call in calls)


def smallest_image_size(model: nn.Module, upper: int) -> int | None:
    """The smallest square input the network accepts, up to `upper` (None if not even that):
    for an error message that says what would work."""
    def works(size: int) -> bool:
        try:
            census(model, size)
            return True
        except Exception:  # noqa: BLE001 - any failure means "too small"
            return False

    if not works(upper):
        return None
    low, high = 1, upper  # works(high); find the smallest that works, sizes being monotone
    while low < high:
        middle = (low + high) // 2
        if works(middle):
            high = middle
        else:
            low = middle + 1
    return high
