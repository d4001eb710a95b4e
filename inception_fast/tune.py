"""`inception-fast tune`: time the Triton stage kernel's tile configs and `auto`'s per-block
backend choices ahead of time, so that no first call waits for them. Both depend on shapes
only, so the network runs with random weights; every stage of every block is timed at each
batch size (bucket), then every block's backends, and the choices go to the caches that later
processes read. Where the shipped tables apply (132-SM Hopper) they are used instead of timing,
unless `force`."""

from __future__ import annotations

import os
import sys
import time

import torch

from . import architectures
from .kernels.triton import tuning
from .optimize import optimize
from .timing import synchronize


def tune(model_name: str, batches: tuple[int, ...], dtype: torch.dtype, image_size: int | None = None,
         force: bool = False, device: str = "cuda") -> int:
    """Tune every stage of `model_name` at each batch size, then `auto`'s choice for every
    block; returns the number of tile choices in the cache afterwards. `force`: ignore the
    shipped tables and re-time tile keys already cached (auto's cached choices stay: delete
    autoselect.json to re-time them)."""
    if not torch.cuda.is_available():
        raise RuntimeError("tuning times the Triton kernels on a GPU; no CUDA device is available")
    model = architectures.create(model_name).eval()
    size = image_size or architectures.default_cfg(model).get("input_size", (3, 299, 299))[-1]
    fused = optimize(model, backend="triton", dtype=dtype, device=device, cuda_graph=False)
    auto = optimize(model, backend="auto", dtype=dtype, device=device, cuda_graph=False)
    saved = os.environ.get("INCEPTION_FAST_AUTOTUNE")
    os.environ["INCEPTION_FAST_AUTOTUNE"] = "force" if force else "1"
    try:
        for batch in batches:
            start = time.perf_counter()
            x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            with torch.inference_mode():
                fused(x)
                auto(x)  # after the tiles: auto times the tuned kernels
            synchronize(device)
            print(f"inception_fast: {model_name} batch {batch} (bucket {tuning.batch_bucket(batch)}) "
                  f"tuned in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    finally:
        if saved is None:
            os.environ.pop("INCEPTION_FAST_AUTOTUNE", None)
        else:
            os.environ["INCEPTION_FAST_AUTOTUNE"] = saved
    from . import cache

    return len(cache.TUNING.entries())
