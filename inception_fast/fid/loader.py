"""DataLoader workers: files in, batches of uint8 pixels (or JPEG bytes for the GPU) out.

A batch may mix image sizes: its images are grouped by size, one stacked uint8 tensor per
size, and each group is resized to 299x299 on the device (as pytorch-fid's network resizes
every image, one at a time or not, to the same result). A file that cannot be read is not an
error here: it travels back as a failure with its reason, and is reported by name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .images import JPEG_EXTENSIONS, decode_rgb, jpeg_mode, read_bytes

# The ways a corrupt, unsupported or too large image file fails in PIL and numpy.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, MemoryError, EOFError, RuntimeError,
                 Image.DecompressionBombError)


@dataclass
class Item:
    index: int  # position in the file list
    pixels: np.ndarray | None = None  # [H, W, 3] uint8
    jpeg: torch.Tensor | None = None  # the file's bytes, to decode on the GPU
    error: str | None = None


@dataclass
class Batch:
    """One DataLoader batch. `groups` are (indices, [k, H, W, 3] uint8) with one size each."""

    groups: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    jpeg_indices: list[int] = field(default_factory=list)
    jpegs: list[torch.Tensor] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this in its pinning thread. JPEG bytes stay
        # pageable: the decoder reads them on the host.
        self.groups = [(indices, pixels.pin_memory()) for indices, pixels in self.groups]
        return self

    def __len__(self) -> int:
        return sum(len(indices) for indices, _ in self.groups) + len(self.jpegs) + len(self.failures)


class ImageFiles(Dataset):
    """Decodes `files[i]` with PIL, or, with `gpu_jpeg`, reads the bytes of RGB and grayscale
    JPEGs for the GPU decoder (other files are still decoded here)."""

    def __init__(self, files: list[os.PathLike], gpu_jpeg: bool = False) -> None:
        self.files = [str(f) for f in files]
        self.gpu_jpeg = gpu_jpeg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        try:
            if self.gpu_jpeg and path.rsplit(".", 1)[-1].lower() in JPEG_EXTENSIONS \
                    and jpeg_mode(path) in ("RGB", "L"):
                return Item(index, jpeg=read_bytes(path))
            return Item(index, pixels=decode_rgb(path))
        except DECODE_ERRORS as err:
            return Item(index, error=f"{type(err).__name__}: {err}")


def collate(items: list[Item]) -> Batch:
    batch = Batch()
    by_size: dict[tuple[int, int], list[Item]] = {}
    for item in items:
        if item.error is not None:
            batch.failures.append((item.index, item.error))
        elif item.jpeg is not None:
            batch.jpeg_indices.append(item.index)
            batch.jpegs.append(item.jpeg)
        else:
            by_size.setdefault(tuple(item.pixels.shape[:2]), []).append(item)
    for size, group in by_size.items():
        indices = torch.tensor([item.index for item in group], dtype=torch.int64)
        pixels = _uint8_batch((len(group), *size, 3))
        np.stack([item.pixels for item in group], out=pixels.numpy())
        batch.groups.append((indices, pixels))
    return batch


def _uint8_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 tensor; in a DataLoader worker, in shared memory from the start (as
    default_collate does), so that sending it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def default_num_workers(ranks_on_this_host: int = 1) -> int:
    """All the CPUs this process may use, shared between the ranks on the host, less one for
    the process that drives the GPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, cpus // max(1, ranks_on_this_host) - 1)


def image_loader(files: list[os.PathLike], batch_size: int, num_workers: int, pin_memory: bool,
                 gpu_jpeg: bool = False) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        ImageFiles(files, gpu_jpeg), batch_size=batch_size, shuffle=False, drop_last=False,
        num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
    )
