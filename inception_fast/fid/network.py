"""The FID network: the TensorFlow-ported Inception-v3 that pytorch-fid computes features with.

`FIDInceptionV3` has pytorch-fid's `InceptionV3` module tree, `state_dict` keys and forward
(its `blocks` ModuleList, `output_blocks`, `resize_input`, `normalize_input`; the forward
returns the list of the selected blocks' outputs), so either loads the other's weights. It is
torchvision's Inception3 with three changes that the TF graph of 2015 had:

- every average pool inside a block ignores the zero padding (TF's `count_include_pad=False`);
- the last block (Mixed_7c) pools its pool branch with a max-pool, not an average pool;
- the classifier has 1008 classes (only its weights are kept: no output uses it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv

from .dims import BLOCK_INDEX_BY_DIM

NUM_CLASSES = 1008  # the TF graph's ImageNet classes, 1000 plus unused ones
INPUT_SIZE = 299


def _pool_exclude_pad(x: torch.Tensor) -> torch.Tensor:
    # TF averages over the window cells inside the image only.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tv.InceptionA):
    """InceptionA whose pool branch ignores the padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_pool_exclude_pad(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(tv.InceptionC):
    """InceptionC whose pool branch ignores the padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_pool_exclude_pad(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class _FIDInceptionE(tv.InceptionE):
    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(self._pool(x))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


# The two InceptionE blocks keep pytorch-fid's class names, so a tool that recognises one
# network's blocks by name recognises the other's.
class FIDInceptionE_1(_FIDInceptionE):
    """Mixed_7b: InceptionE whose pool branch ignores the padding."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return _pool_exclude_pad(x)


class FIDInceptionE_2(_FIDInceptionE):
    """Mixed_7c: InceptionE with a max-pool in its pool branch (as in the TF graph)."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def fid_inception3() -> tv.Inception3:
    """torchvision's Inception3 with the FID blocks, 1008 classes and no auxiliary classifier:
    the module tree (and `state_dict` keys) of pytorch-fid's checkpoint file. Weights are
    PyTorch's default initialisation; load a checkpoint into it (`checkpoint.py`)."""
    inception = tv.Inception3(
        num_classes=NUM_CLASSES, aux_logits=False, init_weights=False,
        inception_blocks=[tv.BasicConv2d, FIDInceptionA, tv.InceptionB, FIDInceptionC, tv.InceptionD,
                          FIDInceptionE_1, tv.InceptionAux],
    )
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


class FIDInceptionV3(nn.Module):
    """pytorch-fid's `InceptionV3` feature network (`use_fid_inception=True`).

    Args:
        output_blocks: indices of the blocks whose outputs the forward returns (0: first
            max-pool, 64 channels; 1: second max-pool, 192; 2: Mixed_6e, 768; 3: the final
            average pool, 2048).
        resize_input: resize the input bilinearly to 299x299 first.
        normalize_input: map the input from [0, 1] to [-1, 1] first.
        inception: the `fid_inception3()` module to take the layers from (weights included);
            default a freshly initialised one.
    """

    DEFAULT_BLOCK_INDEX = 3
    BLOCK_INDEX_BY_DIM = BLOCK_INDEX_BY_DIM

    def __init__(
        self,
        output_blocks: Iterable[int] = (DEFAULT_BLOCK_INDEX,),
        resize_input: bool = True,
        normalize_input: bool = True,
        requires_grad: bool = False,
        inception: tv.Inception3 | None = None,
    ) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        self.output_blocks = sorted(output_blocks)
        if not self.output_blocks or self.output_blocks[0] < 0 or self.output_blocks[-1] > 3:
            raise ValueError(f"output_blocks must be indices in 0..3, got {list(output_blocks)}")
        self.last_needed_block = max(self.output_blocks)
        net = inception if inception is not None else fid_inception3()

        stages = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
             net.Mixed_6d, net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        # Only the blocks up to the last one asked for exist, as in pytorch-fid.
        self.blocks = nn.ModuleList(nn.Sequential(*stage) for stage in stages[: self.last_needed_block + 1])
        for param in self.parameters():
            param.requires_grad = requires_grad

    def forward(self, inp: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] images in [0, 1] -> the outputs of `output_blocks`, in ascending order."""
        outputs = []
        x = inp
        if self.resize_input:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        if self.normalize_input:
            x = 2 * x - 1
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.output_blocks:
                outputs.append(x)
            if index == self.last_needed_block:
                break
        return outputs
