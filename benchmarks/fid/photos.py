"""Real photographs for FID measurements, offline: scikit-image's bundled sample images.

They are read from scikit-image's wheel file (a zip; nothing is installed or imported), from an
installed scikit-image, or from any folder of photos. Sets of crops are cut from them: random
square crops (30-100% of the short side), mirrored at random, resized to 299x299 (PIL bicubic
with antialiasing), as uint8 [N, 3, 299, 299] tensors.

    pip download scikit-image --no-deps -d wheels/   # on a machine with a package index
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The photographs among scikit-image's sample images (its drawings, scans of text and
# synthetic test patterns left out), in a fixed order.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)
CROP_SIZE = 299


def _from_wheel(wheel: Path) -> dict[str, Image.Image]:
    photos = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in SKIMAGE_PHOTOS:
            member = f"skimage/data/{name}"
            if member in archive.namelist():
                photos[name] = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
    return photos


def _from_folder(folder: Path) -> dict[str, Image.Image]:
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".webp")
    names = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    return {p.name: Image.open(p).convert("RGB") for p in names}


def load_photos(source: str | None) -> tuple[dict[str, Image.Image], str]:
    """(name -> RGB photo, where they came from). `source`: a scikit-image wheel, a folder, or
    None for an installed scikit-image."""
    if source is None:
        try:
            import skimage
        except ImportError as err:
            raise SystemExit("no photos: give --photos with scikit-image's wheel file or a folder of photos "
                             "(pip download scikit-image --no-deps -d wheels/)") from err
        folder = Path(skimage.__file__).parent / "data"
        photos = {n: Image.open(folder / n).convert("RGB") for n in SKIMAGE_PHOTOS if (folder / n).exists()}
        return photos, f"scikit-image {skimage.__version__} (installed)"
    path = Path(source)
    photos = _from_wheel(path) if path.suffix == ".whl" else _from_folder(path)
    if len(photos) < 4:
        raise SystemExit(f"found {len(photos)} photos in {path}; need at least 4")
    return photos, path.name


def crops(photos: list[Image.Image], count: int, seed: int) -> torch.Tensor:
    """`count` random crops of `photos` as uint8 [count, 3, 299, 299]."""
    rng = np.random.default_rng(seed)
    out = torch.empty(count, 3, CROP_SIZE, CROP_SIZE, dtype=torch.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.3, 1.0))
        x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        crop = photo.crop((x, y, x + side, y + side)).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
    return out


def photo_sets(photos: dict[str, Image.Image], count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three sets of crops: "A" and "A2" from the same half of the photos (a small FID between
    them), "B" from the other half (a large one)."""
    names = sorted(photos)
    first, second = [photos[n] for n in names[0::2]], [photos[n] for n in names[1::2]]
    return {"A": crops(first, count, seed), "A2": crops(first, count, seed + 1),
            "B": crops(second, count, seed + 2)}


def photo_weights(weights: str | None, out: Path, sets: dict[str, torch.Tensor], device) -> str | Path:
    """`weights` where given, else a random checkpoint in pytorch-fid's format with BatchNorm
    calibrated on 64 crops of each set (every layer's activations normalised, as in a trained
    network), written to `out`."""
    if weights is not None:
        return weights
    from inception_fast.fid.testing import write_random_checkpoint

    path = out / "random-calibrated-fid-inception.pth"
    calibration = torch.cat([sets["A"][:64], sets["B"][:64]]).float().to(device) / 255
    write_random_checkpoint(path, seed=0, calibration_images=calibration)
    return path
