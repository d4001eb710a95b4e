"""The feeder thread between the DataLoader and the network: errors reach the caller, an early
stop ends the thread, and the prepared batches are what pytorch-fid's network would see."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fid_helpers import checkpoint_path
from PIL import Image

from inception_fast.fid import build_feature_model, compute_features, pipeline
from inception_fast.fid.loader import Item, collate, image_loader
from inception_fast.fid.testing import natural_image


def _folder(tmp_path, count: int, sizes=((24, 24),)) -> list:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(natural_image(rng, *sizes[i % len(sizes)])).save(path)
        files.append(path)
    return files


def test_prepared_batches_are_pytorch_fids_input(tmp_path):
    files = _folder(tmp_path, 5, sizes=((24, 24), (30, 18)))
    batch = next(iter(image_loader(files, batch_size=5, num_workers=0, pin_memory=False)))
    prepared = pipeline.prepare(batch, torch.device("cpu"))
    assert sorted(prepared.positions.tolist()) == list(range(5))
    for row, position in enumerate(prepared.positions.tolist()):
        # ToTensor, then the network's own resize.
        pixels = torch.from_numpy(np.array(Image.open(files[position]).convert("RGB"))).permute(2, 0, 1)
        expected = F.interpolate(pixels[None].float().div(255), size=(299, 299), mode="bilinear",
                                 align_corners=False)
        assert torch.equal(prepared.images[row:row + 1], expected)


def test_an_error_while_preparing_a_batch_reaches_the_caller(tmp_path, monkeypatch):
    _folder(tmp_path, 6)
    model = build_feature_model(checkpoint_path(), dims=64, device="cpu", backend="eager")
    real, calls = pipeline.prepare, itertools.count()

    def fails_on_the_second_batch(batch, device):
        if next(calls) == 1:
            raise RuntimeError("copy to the device failed")
        return real(batch, device)

    monkeypatch.setattr(pipeline, "prepare", fails_on_the_second_batch)
    with pytest.raises(RuntimeError, match="copy to the device failed"):
        compute_features(tmp_path, model=model, dims=64, batch_size=2, num_workers=0)


def test_the_feeder_thread_ends_when_its_consumer_stops():
    pixels = natural_image(np.random.default_rng(1), 8, 8)
    endless = (collate([Item(i, pixels=pixels)]) for i in itertools.count())
    feeder = pipeline._Feeder(endless, torch.device("cpu"))
    batches = iter(feeder)
    assert next(batches).images.shape == (1, 3, 299, 299)
    batches.close()
    feeder.thread.join(timeout=10)
    assert not feeder.thread.is_alive()
