"""Finding image files and decoding them on the CPU exactly as pytorch-fid does.

pytorch-fid opens every file with PIL and converts it with `.convert('RGB')` (grayscale is
replicated, the alpha channel of RGBA is dropped), then `ToTensor` divides by 255 in float32.
Here the division happens later, on the device: workers send the uint8 pixels (4x less to copy
between processes and to the GPU), and `x.float() / 255` gives the same float32 values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# pytorch-fid's IMAGE_EXTENSIONS. Matched case-insensitively here (pytorch-fid's glob is
# case-sensitive on Linux and so skips e.g. ".JPG").
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
JPEG_EXTENSIONS = frozenset({"jpg", "jpeg"})


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix[1:].lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder`, nested folders included, sorted (pytorch-fid's order
    for a flat folder). An empty result is an error that says what was searched for."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a folder of images or an .npz statistics file, got the file "
                                 f"{folder}")
    files = [Path(root) / name for root, _, names in os.walk(folder, followlinks=True)
             for name in names if is_image_file(name)]
    if not files:
        raise ValueError(
            f"no images in {folder} (nor in its subfolders): looked for files ending in "
            f"{', '.join('.' + e for e in sorted(IMAGE_EXTENSIONS))}"
        )
    return sorted(files)


def decode_rgb(source) -> np.ndarray:
    """[H, W, 3] uint8 pixels of an image file (a path or a file object), converted as
    pytorch-fid converts it. May be read-only (it is copied into a batch next)."""
    with Image.open(source) as image:
        # convert('RGB') of an RGB image is a plain copy: skip it, the pixels are the same.
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def jpeg_mode(path: str | os.PathLike) -> str | None:
    """The PIL mode of a JPEG file from its header (no decode), or None when the file is not a
    JPEG. GPU decoding is used only where it can give what PIL gives: RGB and grayscale."""
    with Image.open(path) as image:
        return image.mode if image.format == "JPEG" else None


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (what torchvision's JPEG decoders take)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
