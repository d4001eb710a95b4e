"""Write N distinct JPEG files of natural-looking content, fast, for FID timing runs.

    python benchmarks/fid/make_images.py DIR --count 25000 --size 256 [--seed 0] [--quality 90]

A pool of `inception_fast.fid.testing.natural_image`s (smooth random fields with detail at every
scale, a colour cast, sharp-edged shapes) is made first; every file is one of them cyclically
shifted, maybe mirrored, with its own brightness/contrast and sensor grain, so no two files are
the same and each encodes like a photograph of its size (not like noise, not like a flat
field). Runs on all CPUs; a second run with the same arguments finds the files and does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

POOL = 256  # distinct base images per run


def _base_image(size: int, seed: int, index: int) -> np.ndarray:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from inception_fast.fid.testing import natural_image

    return natural_image(np.random.default_rng([seed, size, index]), size, size)


def _write_range(folder: str, pool_file: str, start: int, stop: int, size: int, seed: int,
                 quality: int) -> int:
    bases = np.load(pool_file, mmap_mode="r")
    noise = np.random.default_rng([seed, size, 1]).normal(0, 3, size=(2 * size, 2 * size, 3))
    grain = noise.astype(np.float32)
    for index in range(start, stop):
        rng = np.random.default_rng([seed, size, 2, index])
        image = bases[rng.integers(len(bases))].astype(np.float32)
        image = np.roll(image, tuple(rng.integers(0, size, size=2)), axis=(0, 1))
        if rng.random() < 0.5:
            image = image[:, ::-1]
        gy, gx = rng.integers(0, size, size=2)
        image = (image - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-25, 25)
        image += grain[gy:gy + size, gx:gx + size]
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            Path(folder) / f"{index:06d}.jpg", quality=quality)
    return stop - start


def make_images(folder: str | os.PathLike, count: int, size: int, seed: int = 0, quality: int = 90,
                workers: int | None = None) -> dict:
    folder = Path(folder)
    marker = folder / ".made"
    wanted = {"count": count, "size": size, "seed": seed, "quality": quality}
    if marker.exists() and json.loads(marker.read_text()).get("args") == wanted:
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    workers = workers or len(os.sched_getaffinity(0))
    chunks = np.array_split(np.arange(count), workers * 4)
    pool_file = folder / ".pool.npy"
    with ProcessPoolExecutor(workers) as executor:
        bases = executor.map(_base_image, [size] * POOL, [seed] * POOL, range(POOL), chunksize=4)
        np.save(pool_file, np.stack(list(bases)))
        jobs = [executor.submit(_write_range, str(folder), str(pool_file), int(c[0]), int(c[-1]) + 1, size,
                                seed, quality) for c in chunks if len(c)]
        written = sum(job.result() for job in jobs)
    pool_file.unlink()
    total_bytes = sum(f.stat().st_size for f in folder.glob("*.jpg"))
    info = {"args": wanted, "files": written, "mean_file_kb": total_bytes / max(written, 1) / 1024,
            "seconds": time.perf_counter() - start}
    marker.write_text(json.dumps(info))
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    info = make_images(args.folder, args.count, args.size, args.seed, args.quality, args.workers)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
