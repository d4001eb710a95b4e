"""Inception-v3, as torchvision and timm build it.

Both call their pools functionally inside `forward` (`F.avg_pool2d(x, 3, 1, 1)`, which counts
the padding: border windows divide by 9; `F.max_pool2d(x, 3, 2)`); InceptionE splits a branch
into parallel 1x3 and 3x1 convs. The compiler reads all of it from the traced calls.
torchvision's `transform_input=True` rescales each input channel first (a PyTorch step).
"""

from __future__ import annotations

from torch import nn

NAME = "inception_v3"
DEFAULT_CFG = {
    "input_size": (3, 299, 299),
    "interpolation": "bilinear",
    "crop_pct": 299 / 342,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "num_classes": 1000,
    "pool_size": (8, 8),
    "first_conv": "Conv2d_1a_3x3.conv",
    "classifier": "fc",
}


def matches(model: nn.Module) -> bool:
    return type(model).__name__ in ("Inception3", "InceptionV3")


def create(transform_input: bool = False, num_classes: int = 1000) -> nn.Module:
    """torchvision's inception_v3 with random weights (eval mode)."""
    import torchvision

    return torchvision.models.inception_v3(
        weights=None, init_weights=True, aux_logits=False, transform_input=transform_input,
        num_classes=num_classes,
    ).eval()


def create_timm(num_classes: int = 1000) -> nn.Module:
    """timm's inception_v3 with random weights (eval mode)."""
    import timm

    return timm.create_model("inception_v3", pretrained=False, num_classes=num_classes).eval()


MODELS = {NAME: create, "timm_inception_v3": create_timm}
