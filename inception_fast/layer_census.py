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


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The network's top-level blocks, in order: its children, where a container (Sequential,
    ModuleList, ModuleDict) or an only child stands for the blocks inside it. timm's
    inception_v4 gives features.0 .. features.21 and last_linear; Inception-ResNet-v2 gives its
    repeats one by one (repeat.0 .. repeat.9); pytorch-fid's InceptionV3 gives blocks.0.0 .."""
    found = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        for name, child in children:
            path = f"{prefix}.{name}" if prefix else name
            has_children = next(child.children(), None) is not None
            if has_children and (isinstance(child, CONTAINERS) or len(children) == 1):
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

    `model` is left untouched: the pass runs on a copy, on the meta device unless `on_meta` is
    False (then on the CPU, in float32). A module called twice is listed twice. Raises the
    network's own error when the image is too small for it."""
    height, width = _pair(image_size)
    device = torch.device("meta") if on_meta else torch.device("cpu")
    probe = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
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

    handles = [
        module.register_forward_hook(record(path))
        for path, module in probe.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            probe(torch.zeros(1, 3, height, width, device=device))
    finally:
        for handle in handles:
            handle.remove()
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
