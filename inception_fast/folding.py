"""BatchNorm folding and the stacking of sibling convs into one weight per plan op.

Folding is done in float64 and the result cast once, so every dtype starts from the same
exactly-rounded weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .plan import AvgPoolBiasRelu, BlockPlan, Conv


@dataclass
class FoldedConv:
    weight: torch.Tensor  # [Cout, Cin, KH, KW], BN scale folded in
    bias: torch.Tensor  # [Cout], BN shift; unused on `raw` columns


def _check_conv_bn_relu(path: str, module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"{path or 'block'}: expected a Conv2d + BatchNorm2d + ReLU module")
    act = getattr(bn, "act", nn.ReLU())  # timm's BatchNormAct2d carries its activation
    if not isinstance(act, nn.ReLU):
        raise TypeError(f"{path or 'block'}: activation is {type(act).__name__}, only ReLU fuses")
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise TypeError(f"{path or 'block'}: conv must be bias-free, ungrouped and undilated")
    if bn.running_mean is None or bn.running_var is None:
        raise TypeError(f"{path or 'block'}: BatchNorm has no running statistics to fold")
    return conv, bn


def fold_conv_bn(module: nn.Module, path: str = "") -> FoldedConv:
    """W' = W * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)."""
    conv, bn = _check_conv_bn_relu(path, module)
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    weight = conv.weight.detach().double() * scale[:, None, None, None]
    bias = beta - bn.running_mean.detach().double() * scale
    return FoldedConv(weight.cpu(), bias.cpu())


def _check_geometry(path: str, module: nn.Module, op: Conv, cin: int) -> None:
    conv = module.conv
    expected = (op.kernel, (op.stride, op.stride), op.padding, cin)
    got = (tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), conv.in_channels)
    if got != expected:
        raise TypeError(
            f"{path or 'block'}: conv has (kernel, stride, padding, in_channels) = {got}, "
            f"the plan expects {expected}"
        )


def fold_block(block: nn.Module, plan: BlockPlan) -> list:
    """Folded parameters for each op of `plan`, in `plan.ops` order (None where an op has
    none): a FoldedConv for each Conv, the folded bias for each AvgPoolBiasRelu."""
    folded = {}
    params = []
    for op in plan.ops:
        if isinstance(op, Conv):
            parts = []
            for path in op.sources:
                module = block.get_submodule(path)
                _check_conv_bn_relu(path, module)
                _check_geometry(path, module, op, op.in_channels)
                folded[path] = fold_conv_bn(module, path)
                parts.append(folded[path])
            weight = torch.cat([p.weight for p in parts])
            if weight.shape[0] != op.out_channels:
                raise TypeError(
                    f"{plan.name}: convs {op.sources} have {weight.shape[0]} output channels, "
                    f"the plan writes {op.out_channels}"
                )
            params.append(FoldedConv(weight, torch.cat([p.bias for p in parts])))
        elif isinstance(op, AvgPoolBiasRelu):
            params.append(folded[op.source].bias)
        else:
            params.append(None)
    return params
