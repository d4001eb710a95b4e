"""Folding a fused conv chain into one weight and bias.

conv (W, b) -> BatchNorm (gamma, beta, mean, var, eps) -> * scale becomes
W' = W * s * scale, b' = ((b - mean) * s + beta) * scale with s = gamma / sqrt(var + eps).
Done in float64 and cast once, so every dtype starts from the same exactly-rounded weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .compiler.layers import ConvLayer


def fold_conv(layer: ConvLayer, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [Cout, Cin, KH, KW], bias [Cout]) in float64, on `device` (default: the layer's).
    On a GPU the folding takes a fraction of the CPU's time: Inception-v4's weights in float64
    are 340 MB of new host memory and arithmetic, most of a warm first call's `optimize()`.
    Every float64 step (product, sum, square root, quotient) is rounded exactly on either, so
    the result does not depend on where it was folded."""
    module = layer.module

    def read(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device).double()  # to the device first: the copy moves half the bytes

    weight = read(module.weight)
    if layer.is_linear:
        weight = weight[:, :, None, None]
    bias = read(module.bias) if module.bias is not None else weight.new_zeros(weight.shape[0])
    if layer.bn is not None:
        bn = layer.bn
        var = read(bn.running_var)
        gamma = read(bn.weight) if bn.weight is not None else torch.ones_like(var)
        beta = read(bn.bias) if bn.bias is not None else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + layer.bn_eps)
        weight = weight * s[:, None, None, None]
        bias = (bias - read(bn.running_mean)) * s + beta
    return weight * layer.scale, bias * layer.scale
