"""Realistically scaled random models and the error measures, shared by tests, benchmarks and
the CLI (one copy of the setup, so every number is about the same network)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .reference import InceptionV4


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when `out` holds a NaN or an inf."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@torch.no_grad()
def randomize_batchnorm(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(c, generator=generator) * 0.8 + 0.6)
            bn.bias.copy_(torch.randn(c, generator=generator) * 0.2)
    return module


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set each BatchNorm's running statistics to those of its input on `images`, so that
    activations stay O(1) through every layer (no fp16 overflow, no flush to zero). Only the
    BatchNorms switch to train mode: dropout and auxiliary heads stay as in eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
        bn.train()
    model(images)
    for bn, (momentum, training) in zip(bns, saved):
        bn.momentum = momentum
        bn.train(training)
    return model


def calibrated(model: nn.Module, seed: int = 0, image_size: int = 299, batch: int = 2) -> nn.Module:
    """`model` with random BatchNorm affine parameters and running statistics calibrated on
    random images, in eval mode: the realistically scaled random model of BENCHMARKING.md, so
    activations stay O(1) through every layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d) and bn.affine:
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) * 0.8 + 0.6)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.2 + 0.1)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    return calibrate_batchnorm(model.eval(), images).eval()


def calibrated_model(
    source: str | Callable[[], nn.Module], seed: int = 0, image_size: int | None = None, batch: int = 2,
    **kwargs,
) -> nn.Module:
    """A calibrated random network: `source` is a name of `inception_fast.architectures`
    (`kwargs` go to its constructor) or a function building the model with random weights.
    Calibrated at `image_size` (default: the model's own input size)."""
    from .architectures import create, default_cfg

    torch.manual_seed(seed)
    model = create(source, **kwargs) if isinstance(source, str) else source(**kwargs)
    size = image_size or default_cfg(model).get("input_size", (3, 299, 299))[-1]
    return calibrated(model, seed, size, batch)


def calibrated_inception_v4(seed: int = 0, image_size: int = 299, batch: int = 2) -> InceptionV4:
    """A random reference Inception-v4 with BatchNorm calibrated on random images (eval mode)."""
    return calibrated_model(InceptionV4, seed, image_size, batch)


def random_images(batch: int, size: int = 299, *, seed: int | None = None, **kw) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(batch, 3, size, size, generator=gen).to(**kw)
