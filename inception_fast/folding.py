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

    Folding on a GPU takes a fraction of the CPU's time: Inception-v4's weights in float64 are
    340 MB of new host memory and arithmetic, most of a warm first call's `optimize()`. The
    per-channel factors (BatchNorm's scale, the bias) are computed where the layer lives; only
    the weight moves, and its one product per element is rounded exactly on either device, so
    the result does not depend on `device` (a GPU's float64 quotient or square root can differ
    from the CPU's in the last bit: a model moved to the GPU before `optimize()` folds there,
    as it always has)."""
    module = layer.module
    weight = module.weight.detach().to(device).double()  # moved as stored: half the bytes of float64
    if layer.is_linear:
        weight = weight[:, :, None, None]
    home = module.weight.device
    bias = module.bias.detach().double() if module.bias is not None else torch.zeros(
        weight.shape[0], dtype=torch.float64, device=home)
    if layer.bn is not None:
        bn = layer.bn
        var = bn.running_var.detach().double()
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + layer.bn_eps)
        weight = weight * s.to(weight.device)[:, None, None, None]
        bias = (bias - bn.running_mean.detach().double()) * s + beta
    return weight * layer.scale, (bias * layer.scale).to(weight.device)
