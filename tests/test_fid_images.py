"""Image folders as pytorch-fid reads them, and the files and folders it cannot read."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fid_helpers import checkpoint_path, relative_l2
from PIL import Image
from torchvision.transforms import ToTensor

from inception_fast.fid import build_feature_model, compute_features, compute_fid, list_image_files
from inception_fast.fid.images import decode_rgb
from inception_fast.fid.testing import natural_image

ImagePathDataset = pytest.importorskip("pytorch_fid.fid_score").ImagePathDataset


@pytest.fixture(scope="module")
def model64():
    return build_feature_model(checkpoint_path(), dims=64, device="cpu", backend="eager")


def _save(path, array: np.ndarray, mode: str | None = None, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **options)


def _pytorch_fid_pixels(files) -> torch.Tensor:
    """The tensors pytorch-fid's dataset feeds its network (PIL convert('RGB') + ToTensor)."""
    dataset = ImagePathDataset(files, transforms=ToTensor())
    return torch.stack([dataset[i] for i in range(len(dataset))])


def test_nested_folders_and_any_letter_case_of_pytorch_fids_extensions(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b.png", "sub/a.JPG", "sub/deeper/c.webp", "d.tiff", "notes.txt", "e.gif"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
        else:
            _save(tmp_path / name, natural_image(rng, 16, 16))
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert found == ["b.png", "d.tiff", "sub/a.JPG", "sub/deeper/c.webp"]  # no .gif, as in pytorch-fid


def test_an_empty_folder_and_a_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hello")
    for folder in ("empty", "text"):
        with pytest.raises(ValueError, match=r"no images in .*\.png"):
            list_image_files(tmp_path / folder)
    with pytest.raises(FileNotFoundError, match="Invalid path"):
        compute_fid(tmp_path / "nowhere", tmp_path / "empty", checkpoint_path(), dims=64, device="cpu",
                    backend="eager")


def test_grayscale_rgba_and_palette_images_convert_as_in_pytorch_fid(tmp_path, model64):
    rng = np.random.default_rng(1)
    files = []
    for name, mode in (("gray.png", "L"), ("rgba.png", "RGBA"), ("palette.png", "P"), ("gray.jpg", "L"),
                       ("cmyk.jpg", "CMYK"), ("rgb.tif", None)):
        pixels = natural_image(rng, 20 + len(files), 24)
        if mode == "RGBA":
            pixels = np.dstack([pixels, rng.integers(0, 256, pixels.shape[:2], dtype=np.uint8)])
            mode = None
        _save(tmp_path / name, pixels, mode)
        files.append(tmp_path / name)
    files.sort()
    for path in files:
        np.testing.assert_array_equal(decode_rgb(path), np.array(Image.open(path).convert("RGB")))
    expected = torch.cat([model64(_pytorch_fid_pixels([f])) for f in files])
    features = compute_features(tmp_path, model=model64, dims=64, batch_size=4, num_workers=0)
    assert features.shape == (len(files), 64) and features.dtype == np.float64
    assert relative_l2(features, expected) <= 1e-6


def test_unreadable_files_are_skipped_with_a_warning_that_names_them(tmp_path, model64):
    rng = np.random.default_rng(2)
    for i in range(3):
        _save(tmp_path / f"good{i}.jpg", natural_image(rng, 24, 24))
    jpeg = (tmp_path / "good0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "empty.webp").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = compute_features(tmp_path, model=model64, dims=64, batch_size=2, num_workers=2)
    assert features.shape == (3, 64)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and "skipped 3 unreadable image file(s)" in messages[0]
    for name in ("truncated.jpg", "text.png", "empty.webp"):
        assert str(tmp_path / name) in messages[0]
    good = _pytorch_fid_pixels(sorted(tmp_path.glob("good*.jpg")))
    assert relative_l2(features, model64(good)) <= 1e-6


def test_a_folder_of_only_unreadable_files_is_an_error(tmp_path, model64):
    (tmp_path / "a.png").write_text("nope")
    (tmp_path / "b.jpg").write_text("nope")
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(ValueError, match="none of the 2"):
        compute_features(tmp_path, model=model64, dims=64, num_workers=0)


def test_images_of_different_sizes_in_one_batch(tmp_path, model64):
    rng = np.random.default_rng(3)
    sizes = [(24, 24), (31, 17), (24, 24), (40, 52), (299, 299), (31, 17), (12, 70)]
    for i, (h, w) in enumerate(sizes):
        _save(tmp_path / f"{i}.png", natural_image(rng, h, w))
    files = sorted(tmp_path.glob("*.png"))
    one_by_one = torch.cat([model64(_pytorch_fid_pixels([f])) for f in files])
    batched = compute_features(tmp_path, model=model64, dims=64, batch_size=5, num_workers=2)
    assert relative_l2(batched, one_by_one) <= 1e-6


def test_workers_lists_and_tensors_give_the_same_features(tmp_path, model64):
    rng = np.random.default_rng(4)
    pixels = np.stack([natural_image(rng, 28, 28) for _ in range(6)])
    for i, image in enumerate(pixels):
        _save(tmp_path / f"{i}.png", image)
    files = sorted(tmp_path.glob("*.png"))
    in_process = compute_features(tmp_path, model=model64, dims=64, batch_size=4, num_workers=0)
    assert np.array_equal(compute_features(tmp_path, model=model64, dims=64, batch_size=4, num_workers=2),
                          in_process)
    assert np.array_equal(compute_features(files, model=model64, dims=64, batch_size=4, num_workers=0),
                          in_process)
    as_uint8 = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    assert np.array_equal(compute_features(as_uint8, model=model64, dims=64, batch_size=4), in_process)
    as_float = as_uint8.float() / 255
    assert relative_l2(compute_features(as_float, model=model64, dims=64), in_process) <= 1e-6
