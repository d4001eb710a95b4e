"""Stand-ins for pytorch-fid's checkpoint, for tests and benchmarks that run offline.

`write_random_checkpoint` writes a file in pytorch-fid's format (the `state_dict` of
`fid_inception3()`) with random weights scaled so that activations stay O(1) through the
network; pytorch-fid itself loads it when it is placed where its download would be.
`write_image_folder` writes smooth random images, for FID runs on generated files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .network import INPUT_SIZE, fid_inception3


@torch.no_grad()
def random_fid_inception3(seed: int = 0, calibration_images: torch.Tensor | None = None) -> nn.Module:
    """`fid_inception3()` with random weights: He-normal convolutions and non-trivial BatchNorm
    statistics. With `calibration_images` ([N, 3, H, W] in [0, 1]) the BatchNorm statistics are
    measured on them instead (one pass in train mode), so every layer's output is normalised."""
    generator = torch.Generator().manual_seed(seed)
    net = fid_inception3()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        elif isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
            module.bias.copy_(0.2 * torch.randn(channels, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(channels, generator=generator))
        elif isinstance(module, nn.Linear):
            scale = module.in_features**-0.5
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * scale)
            module.bias.zero_()
    if calibration_images is not None:
        _calibrate(net, calibration_images)
    return net.eval()


def _calibrate(net: nn.Module, images: torch.Tensor) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration pass
    net.to(images.device).train()  # calibrate where the images are (the GPU is much faster)
    x = nn.functional.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                  align_corners=False)
    net(2 * x - 1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    net.eval()


def write_random_checkpoint(path: str | os.PathLike, seed: int = 0,
                            calibration_images: torch.Tensor | None = None) -> Path:
    """Write a random-weight checkpoint in pytorch-fid's file format to `path`."""
    net = random_fid_inception3(seed, calibration_images)
    # pytorch-fid's release predates BatchNorm's num_batches_tracked: leave it out likewise.
    state = {k: v.cpu() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def natural_image(rng: np.random.Generator, height: int, width: int, mean_shift: float = 0.0) -> np.ndarray:
    """[H, W, 3] uint8: a smooth random image with detail at every scale (octaves of upsampled
    noise, a random colour cast and a few sharp-edged shapes), closer to a photograph's
    statistics than pixel noise. `mean_shift` moves the brightness, to make a second
    distribution."""
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    # Octaves from 2x2 cells down to 4-pixel cells, with a 1/f-like fall-off in amplitude.
    octaves = max(1, int(np.log2(max(height, width) / 4)))
    weights = [0.6**octave for octave in range(octaves)]
    for octave, weight in enumerate(weights):
        cells = 2 ** (octave + 1)
        noise = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        layer = Image.fromarray(noise).resize((width, height), Image.BICUBIC)
        canvas += np.asarray(layer, dtype=np.float32) * weight
    canvas = canvas / sum(weights)
    canvas = (canvas - canvas.mean()) * rng.uniform(1.5, 3.0) + 128 + rng.normal(0, 20, size=3) + mean_shift
    canvas += rng.normal(0, 3, size=canvas.shape).astype(np.float32)  # sensor grain
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return np.array(image)


def write_image_folder(folder: str | os.PathLike, count: int, size: int | tuple[int, int], seed: int = 0,
                       suffix: str = ".png", mean_shift: float = 0.0, quality: int = 90) -> list[Path]:
    """`count` natural_image files of `size` (square or (height, width)) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}{suffix}"
        options = {"quality": quality} if suffix.lower() in (".jpg", ".jpeg") else {}
        Image.fromarray(natural_image(rng, height, width, mean_shift)).save(path, **options)
        paths.append(path)
    return paths
