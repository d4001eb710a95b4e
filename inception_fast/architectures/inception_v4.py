"""Inception-v4: the plain-PyTorch reference every fused backend is checked against, and its
default configuration. (timm's `inception_v4` computes the same; either fuses.)

The module tree mirrors timm's ``inception_v4`` so that its ``state_dict`` keys are the same
(``features.N.<branch>.<i>.conv.weight``, ``...bn.running_var``, ``last_linear.weight``): a timm
checkpoint loads with ``strict=True`` and gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BN_EPS", "DEFAULT_CFG", "ConvBnRelu", "InceptionA", "InceptionB", "InceptionC", "InceptionV4",
    "Mixed3a", "Mixed4a", "Mixed5a", "ReductionA", "ReductionB", "create", "inception_v4", "matches",
]
NAME = "inception_v4"
BN_EPS = 1e-3

# Preprocessing of timm's `inception_v4.tf_in1k` weights.
DEFAULT_CFG = {
    "input_size": (3, 299, 299),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "num_classes": 1000,
    "pool_size": (8, 8),
    "first_conv": "features.0.conv",
    "classifier": "last_linear",
}


class ConvBnRelu(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU, with timm's `conv` / `bn` keys."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _avg_pool_3x3():
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Mixed3a(nn.Module):
    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = ConvBnRelu(64, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat((self.maxpool(x), self.conv(x)), 1)


class Mixed4a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBnRelu(160, 64, 1), ConvBnRelu(64, 96, 3))
        self.branch1 = nn.Sequential(
            ConvBnRelu(160, 64, 1),
            ConvBnRelu(64, 64, (1, 7), padding=(0, 3)),
            ConvBnRelu(64, 64, (7, 1), padding=(3, 0)),
            ConvBnRelu(64, 96, 3),
        )

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x)), 1)


class Mixed5a(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ConvBnRelu(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.conv(x), self.maxpool(x)), 1)


class InceptionA(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(384, 96, 1)
        self.branch1 = nn.Sequential(ConvBnRelu(384, 64, 1), ConvBnRelu(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(
            ConvBnRelu(384, 64, 1),
            ConvBnRelu(64, 96, 3, padding=1),
            ConvBnRelu(96, 96, 3, padding=1),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBnRelu(384, 96, 1))

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionA(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            ConvBnRelu(384, 192, 1),
            ConvBnRelu(192, 224, 3, padding=1),
            ConvBnRelu(224, 256, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionB(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(1024, 384, 1)
        self.branch1 = nn.Sequential(
            ConvBnRelu(1024, 192, 1),
            ConvBnRelu(192, 224, (1, 7), padding=(0, 3)),
            ConvBnRelu(224, 256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            ConvBnRelu(1024, 192, 1),
            ConvBnRelu(192, 192, (7, 1), padding=(3, 0)),
            ConvBnRelu(192, 224, (1, 7), padding=(0, 3)),
            ConvBnRelu(224, 224, (7, 1), padding=(3, 0)),
            ConvBnRelu(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBnRelu(1024, 128, 1))

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionB(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBnRelu(1024, 192, 1), ConvBnRelu(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            ConvBnRelu(1024, 256, 1),
            ConvBnRelu(256, 256, (1, 7), padding=(0, 3)),
            ConvBnRelu(256, 320, (7, 1), padding=(3, 0)),
            ConvBnRelu(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionC(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(1536, 256, 1)
        self.branch1_0 = ConvBnRelu(1536, 384, 1)
        self.branch1_1a = ConvBnRelu(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = ConvBnRelu(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = ConvBnRelu(1536, 384, 1)
        self.branch2_1 = ConvBnRelu(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = ConvBnRelu(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = ConvBnRelu(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = ConvBnRelu(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(_avg_pool_3x3(), ConvBnRelu(1536, 256, 1))

    def forward(self, x):
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat(
            (
                self.branch0(x),
                self.branch1_1a(x1),
                self.branch1_1b(x1),
                self.branch2_3a(x2),
                self.branch2_3b(x2),
                self.branch3(x),
            ),
            1,
        )


class InceptionV4(nn.Module):
    """Inception-v4 (Szegedy et al. 2016, Figure 9) with timm's module names."""

    default_cfg = DEFAULT_CFG

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 1536
        self.features = nn.Sequential(
            ConvBnRelu(3, 32, 3, stride=2),
            ConvBnRelu(32, 32, 3),
            ConvBnRelu(32, 64, 3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA() for _ in range(4)],
            ReductionA(),
            *[InceptionB() for _ in range(7)],
            ReductionB(),
            *[InceptionC() for _ in range(3)],
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x):
        return self.last_linear(torch.flatten(self.global_pool(x), 1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def inception_v4(num_classes: int = 1000, weights=None) -> InceptionV4:
    """The reference Inception-v4.

    Args:
        num_classes: size of the classifier.
        weights: ``None`` (random init), a path to a ``.pth`` / ``.safetensors`` checkpoint with
            timm's keys, or ``"tf_in1k"`` / ``"inception_v4.tf_in1k"`` for timm's pretrained
            weights (needs network access or a filled Hugging Face cache).
    """
    from ..weights import load_weights

    model = InceptionV4(num_classes)
    if weights is not None:
        model.load_state_dict(load_weights(weights), strict=True)
    return model.eval()


def matches(model: nn.Module) -> bool:
    return isinstance(model, InceptionV4) or type(model).__name__ == "InceptionV4"


def create(num_classes: int = 1000) -> nn.Module:
    """timm's inception_v4 with random weights (eval mode)."""
    import timm

    return timm.create_model("inception_v4", pretrained=False, num_classes=num_classes).eval()


MODELS = {NAME: create}
