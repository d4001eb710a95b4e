"""One file per network: its default configuration (input size, normalisation) and how to
build its source model with random weights (tests and benchmarks). How a network maps to block
plans is not here: the compiler reads that from the model itself."""

from __future__ import annotations

from torch import nn

from . import googlenet, inception_resnet_v2, inception_v3, inception_v4

ARCHITECTURES = (inception_v4, googlenet, inception_v3, inception_resnet_v2)
MODELS = {name: create for arch in ARCHITECTURES for name, create in arch.MODELS.items()}


def default_cfg(model: nn.Module) -> dict:
    """The model's own pretrained/default config (timm), else its architecture's."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg:
            return dict(cfg)
    for arch in ARCHITECTURES:
        if arch.matches(model):
            return dict(arch.DEFAULT_CFG)
    return {}


def create(name: str, **kwargs) -> nn.Module:
    """A source model by name, with random weights, in eval mode."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
