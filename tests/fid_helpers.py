"""Shared data of the FID tests: a random-weight checkpoint in pytorch-fid's file format, folders
of generated images, and pytorch-fid made to load that checkpoint instead of downloading.

Everything is written once per test process (under one temporary folder, removed at exit),
because the CPU forwards, not the files, are what the tests pay for.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from inception_fast.fid.testing import write_image_folder, write_random_checkpoint


@functools.cache
def scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="inception_fast_fid_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def checkpoint_path(seed: int = 0) -> Path:
    """pytorch-fid's checkpoint format (the FID Inception3's state_dict), random weights."""
    return write_random_checkpoint(scratch() / f"pt_inception-random-{seed}.pth", seed=seed)


@functools.cache
def image_folders(count: int) -> tuple[Path, Path]:
    """Two flat folders of `count` small generated images each, from two distributions (the
    second brighter), a mix of PNG and JPEG files of one size per folder (pytorch-fid batches
    need one size)."""
    folders = []
    for name, seed, shift in (("a", 1, 0.0), ("b", 2, 35.0)):
        folder = scratch() / f"images-{count}-{name}"
        half = count // 2
        write_image_folder(folder / "png", half, 24, seed=seed, mean_shift=shift)
        write_image_folder(folder / "jpg", count - half, 24, seed=seed + 100, suffix=".jpg", mean_shift=shift)
        # Flat: pytorch-fid only looks at the top level of a folder.
        for path in list((folder / "png").iterdir()) + list((folder / "jpg").iterdir()):
            path.rename(folder / f"{path.parent.name}-{path.name}")
        (folder / "png").rmdir()
        (folder / "jpg").rmdir()
        folders.append(folder)
    return folders[0], folders[1]


@contextlib.contextmanager
def pytorch_fid_loads(checkpoint: Path):
    """pytorch-fid's InceptionV3 loads `checkpoint` instead of downloading its weights."""
    import pytorch_fid.inception

    def load(url, progress=True, **_):
        return torch.load(checkpoint, map_location="cpu", weights_only=True)

    original = pytorch_fid.inception.load_state_dict_from_url
    pytorch_fid.inception.load_state_dict_from_url = load
    try:
        yield
    finally:
        pytorch_fid.inception.load_state_dict_from_url = original


def pytorch_fid_network(dims_or_blocks, checkpoint: Path | None = None):
    """pytorch-fid's own InceptionV3 with the random checkpoint's weights, eval mode."""
    from pytorch_fid.inception import InceptionV3

    blocks = [InceptionV3.BLOCK_INDEX_BY_DIM[dims_or_blocks]] if isinstance(dims_or_blocks, int) \
        else list(dims_or_blocks)
    with pytorch_fid_loads(checkpoint or checkpoint_path()):
        return InceptionV3(blocks).eval()


def relative_l2(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    return float((a - b).norm() / b.norm())
