"""How much GPU JPEG decoding (nvJPEG) moves pixels, features and FID from PIL's decoding.

    python benchmarks/fid/decode_difference.py --out OUT --photos scikit_image-*.whl [--count 2500]

Crops of real photographs (photos.py; sets A and B) are saved as JPEG files (PIL, quality 90,
4:2:0 chroma subsampling: what most JPEGs are), then decoded both ways: PIL (libjpeg, what
pytorch-fid uses) and `torchvision.io.decode_jpeg(device="cuda")`. Reported: per-pixel
differences (mean and max absolute, share of values that differ), the relative L2 distance of
the features, and FID(A, B) by each decoder with its relative difference. Also the decode
throughput of each path (images/s) on these files.

Writes OUT/fid-decode.json and OUT/fid-decode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from photos import load_photos, photo_sets, photo_weights  # noqa: E402

from inception_fast.fid import build_feature_model, calculate_frechet_distance, compute_features  # noqa: E402
from inception_fast.fid.gpu_decode import decode_jpegs  # noqa: E402
from inception_fast.fid.images import decode_rgb, list_image_files, read_bytes  # noqa: E402
from inception_fast.fid.statistics import feature_statistics  # noqa: E402


def _write_jpegs(images: torch.Tensor, folder: Path, quality: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.jpg", quality=quality)


def _pixel_differences(files: list[Path], batch: int = 256) -> tuple[dict, float, float]:
    """Pixel statistics of nvJPEG against PIL, and each path's decode rate (images/s, one thread
    for PIL)."""
    total, differing, absolute, largest = 0, 0, 0.0, 0
    pil_seconds = gpu_seconds = 0.0
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        t = time.perf_counter()
        pil = [torch.from_numpy(decode_rgb(f).copy()) for f in chunk]
        pil_seconds += time.perf_counter() - t
        data = [read_bytes(f) for f in chunk]
        torch.cuda.synchronize()
        t = time.perf_counter()
        gpu = decode_jpegs(data, torch.device("cuda"))
        torch.cuda.synchronize()
        gpu_seconds += time.perf_counter() - t
        for a, b in zip(pil, gpu):
            difference = (a.cuda().permute(2, 0, 1).int() - b.int()).abs()
            total += difference.numel()
            differing += int((difference > 0).sum())
            absolute += float(difference.sum())
            largest = max(largest, int(difference.max()))
    stats = {"mean_abs_levels": absolute / total, "max_abs_levels": largest,
             "share_differing": differing / total}
    return stats, len(files) / pil_seconds, len(files) / gpu_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "fid_out"))
    parser.add_argument("--photos", help="scikit-image's wheel file or a folder of photos")
    parser.add_argument("--weights",
                        help="pytorch-fid's checkpoint (default: random, calibrated on the photos)")
    parser.add_argument("--count", type=int, default=2500)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--backend", default="eager",
                        help="the network's backend (the decoders are compared)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    photos, source = load_photos(args.photos)
    sets = photo_sets(photos, args.count)
    weights = photo_weights(args.weights, out, sets, "cuda")
    model = build_feature_model(weights, dims=2048, device="cuda", backend=args.backend)

    with tempfile.TemporaryDirectory() as scratch:
        folders = {name: Path(scratch) / name for name in ("A", "B")}
        for name, folder in folders.items():
            _write_jpegs(sets[name], folder, args.quality)
        files = list_image_files(folders["A"])
        pixels, pil_rate, gpu_rate = _pixel_differences(files)
        features = {(name, gpu): compute_features(folder, model=model, batch_size=256, gpu_decode=gpu)
                    for name, folder in folders.items() for gpu in (False, True)}
    fid = {gpu: calculate_frechet_distance(*feature_statistics(features[("A", gpu)]),
                                           *feature_statistics(features[("B", gpu)]))
           for gpu in (False, True)}
    feature_l2 = max(float(np.linalg.norm(features[(n, True)] - features[(n, False)])
                           / np.linalg.norm(features[(n, False)])) for n in folders)
    document = {"schema": "inception_fast.fid.decode/1", "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__, "photos": source, "crops_per_set": args.count,
                "jpeg_quality": args.quality, "pixels": pixels,
                "weights": "given" if args.weights else "random, BatchNorm calibrated",
                "decode_images_per_s": {"pil_one_thread": pil_rate, "nvjpeg_batch_256": gpu_rate},
                "feature_rel_l2": feature_l2, "fid_pil": fid[False], "fid_nvjpeg": fid[True],
                "fid_rel_diff": (fid[True] - fid[False]) / fid[False]}
    (out / "fid-decode.json").write_text(json.dumps(document, indent=1))
    summary = (
        f"# nvJPEG against PIL: {args.count} crops per set of {len(photos)} photographs, JPEG quality "
        f"{args.quality}\n\n{document['gpu']}, torch {document['torch']}, weights: {document['weights']}\n\n"
        f"- pixels: mean |difference| {pixels['mean_abs_levels']:.3f} levels, "
        f"max {pixels['max_abs_levels']}, "
        f"{100 * pixels['share_differing']:.1f}% of values differ\n"
        f"- features: relative L2 {feature_l2:.2e}\n"
        f"- FID(A, B): PIL {fid[False]:.6f}, nvJPEG {fid[True]:.6f} (relative difference "
        f"{document['fid_rel_diff']:+.2e})\n"
        f"- decode rate on these files: PIL {pil_rate:,.0f} images/s on one CPU thread, "
        f"nvJPEG {gpu_rate:,.0f} images/s in batches of 256\n"
    )
    (out / "fid-decode.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
