"""Inception-ResNet-v2, as timm builds it.

Block35 / Block17 / Block8: branches -> concatenation -> 1x1 conv with bias (no BatchNorm) ->
`out * scale + x` -> ReLU (the last Block8 has none). The compiler folds the scale into that
conv and runs the residual add and the ReLU in its epilogue.
"""

from __future__ import annotations

from torch import nn

NAME = "inception_resnet_v2"
DEFAULT_CFG = {
    "input_size": (3, 299, 299),
    "interpolation": "bicubic",
    "crop_pct": 0.897,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "num_classes": 1000,
    "pool_size": (8, 8),
    "first_conv": "conv2d_1a.conv",
    "classifier": "classif",
}


def matches(model: nn.Module) -> bool:
    return type(model).__name__ == "InceptionResnetV2"


def create(num_classes: int = 1000) -> nn.Module:
    """timm's inception_resnet_v2 with random weights (eval mode)."""
    import timm

    return timm.create_model("inception_resnet_v2", pretrained=False, num_classes=num_classes).eval()


MODELS = {NAME: create}
