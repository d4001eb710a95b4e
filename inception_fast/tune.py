"""`inception-fast tune`: time the Triton stage kernel's tile configs ahead of time, so that no
first call waits for it. Tuning depends on shapes only, so the network runs with random
weights; every stage of every block is timed at each batch size (bucket) and the choices go to
the tuning cache that later processes read."""

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
    """Tune every stage of `model_name` at each batch size; returns the number of choices in
    the cache afterwards. `force`: ignore the shipped choices and re-time keys already cached."""
    if not torch.cuda.is_available():
        raise RuntimeError("tuning times the Triton kernels on a GPU; no CUDA device is available")
    model = architectures.create(model_name).eval()
    size = image_size or architectures.default_cfg(model).get("input_size", (3, 299, 299))[-1]
    fused = optimize(model, backend="triton", dtype=dtype, device=device, cuda_graph=False)
    saved = os.environ.get("INCEPTION_FAST_AUTOTUNE")
    os.environ["INCEPTION_FAST_AUTOTUNE"] = "force" if force else "1"
    try:
        for batch in batches:
            start = time.perf_counter()
            x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            with torch.inference_mode():
                fused(x)
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
