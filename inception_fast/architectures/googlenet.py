"""GoogLeNet (Inception-V1), as torchvision builds it.

Its quirks are read from the model by the compiler: every max-pool has `ceil_mode=True` (the
stride-2 ones round their output size up), the "5x5" branch is a 3x3 conv (torchvision's
deviation from the paper), `transform_input=True` rescales each input channel before the first
conv (a PyTorch step: folding it into a padded conv would not be exact), and the auxiliary
heads do not run in eval mode.
"""

from __future__ import annotations

from torch import nn

NAME = "googlenet"
DEFAULT_CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "num_classes": 1000,
    "pool_size": (7, 7),
    "first_conv": "conv1.conv",
    "classifier": "fc",
}


def matches(model: nn.Module) -> bool:
    return type(model).__name__ == "GoogLeNet"


def create(transform_input: bool = False, num_classes: int = 1000) -> nn.Module:
    """torchvision's googlenet with random weights (eval mode)."""
    import torchvision

    return torchvision.models.googlenet(
        weights=None, init_weights=True, aux_logits=False, transform_input=transform_input,
        num_classes=num_classes,
    ).eval()


MODELS = {NAME: create}
