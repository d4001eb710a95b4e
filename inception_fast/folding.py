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


def fold_conv(layer: ConvLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [Cout, Cin, KH, KW], bias [Cout]) in float64, on the layer's device (a model on
    the GPU folds there, in a fraction of the CPU's time)."""
    module = layer.module
    weight = module.weight.detach().double()
    if layer.is_linear:
        weight = weight[:, :, None, None]
    bias = module.bias.detach().double() if module.bias is not None else weight.new_zeros(weight.shape[0])
    if layer.bn is not None:
        bn = layer.bn
        var = bn.running_var.detach().double()
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + layer.bn_eps)
        weight = weight * s[:, None, None, None]
        bias = (bias - bn.running_mean.detach().double()) * s + beta
    return weight * layer.scale, bias * layer.scale
