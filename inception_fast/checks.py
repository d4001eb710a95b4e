"""Input checks at the public boundary: each message says what was expected and what came."""

from __future__ import annotations

import torch


def check_inference_input(module: torch.nn.Module, x, in_channels: int) -> None:
    """Validate an NCHW input for an inference-only fused module."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")
    if module.training:
        raise RuntimeError(
            f"{name} is inference-only (folded BatchNorm, no backward): call .eval() first"
        )
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} is inference-only and has no backward: got an input that requires grad; "
            "run under torch.inference_mode() / torch.no_grad() or pass x.detach()"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{name}: expected a 4-D NCHW input [N, {in_channels}, H, W], "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected {in_channels} input channels (NCHW dim 1), got {x.shape[1]} "
            f"in shape {tuple(x.shape)}"
        )
    weight = next(iter(module.buffers()), None)
    if weight is None:
        return
    if x.dtype != weight.dtype:
        raise TypeError(
            f"{name}: input dtype {x.dtype} does not match the module's {weight.dtype}; "
            f"cast the input with x.to({weight.dtype})"
        )
    if x.device != weight.device:
        raise ValueError(
            f"{name}: input is on {x.device} but the module's weights are on {weight.device}; "
            f"move one of them, e.g. x.to('{weight.device}')"
        )
