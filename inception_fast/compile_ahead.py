"""Compile a first call's Triton kernels all at once, in worker processes, before it runs.

Triton compiles a kernel variant on its first launch, so a first call at a new input shape
compiles one variant after another (tile shapes, flags and the batch's own specialization:
seconds each, tens of them in a network). Before that call, `compile_ahead` runs the same
forward once on a scratch input with every Triton launch compiling only
(`kernels.triton.compile_only`): the variants compile side by side, in up to
INCEPTION_FAST_COMPILE_WORKERS worker processes (default: the CPU count, at most 16; 0 or 1:
off), and the real call then finds them compiled. Nothing of that pass is kept but the compiled
kernels and what packing prepares: its outputs are never written, `auto` and the tuning time
and remember nothing during it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import torch

from .backends import get_backend

ENV_WORKERS = "INCEPTION_FAST_COMPILE_WORKERS"
logger = logging.getLogger("inception_fast")


def workers() -> int:
    setting = os.environ.get(ENV_WORKERS, "").strip()
    if not setting:
        return min(16, os.cpu_count() or 1)
    try:
        return max(0, int(setting))
    except ValueError:
        raise ValueError(f"{ENV_WORKERS}={setting!r}: give a number of processes (0 or 1: off)") from None


def wanted(backends, x: torch.Tensor) -> bool:
    """Whether a first call on `x` with these block backends launches Triton kernels that a
    compile-ahead pass could compile in parallel."""
    return x.is_cuda and any(getattr(get_backend(name), "TRITON_KERNELS", False) for name in backends)


def start_hashing_triton(backend: str, device) -> None:
    """Start, in a background thread, what a process's first Triton compile or cache lookup
    waits for first: importing triton and the digest of its compiler (`triton_key`, about
    0.3 s of hashing libtriton, which releases the interpreter). Called by `optimize()` so that
    it overlaps the model's preparation instead of the first call."""
    if torch.device(device).type != "cuda" or not getattr(get_backend(backend), "TRITON_KERNELS", False):
        return
    threading.Thread(target=_hash_triton, name="inception_fast-triton-key", daemon=True).start()


def _hash_triton() -> None:
    try:
        from triton.runtime.cache import triton_key
        triton_key()  # kept by its lru_cache for the process
    except Exception as err:  # noqa: BLE001 - an optimization only; the first compile asks again
        logger.debug("inception_fast: hashing triton ahead failed: %s", err)


def compile_ahead(run, x: torch.Tensor):
    """Run `run` (a forward) once on a scratch tensor like `x` with the Triton launches only
    compiling, in parallel; returns what it compiled where (`CompileCounts`), or None where
    it did not run. A failure here is left for the real call to raise."""
    count = workers()
    if count < 2:
        return None
    from .kernels.triton.compile_only import compiling_only

    start = time.perf_counter()
    try:
        with torch.no_grad(), compiling_only(count) as counts:
            run(torch.empty_like(x))
    except Exception as err:  # noqa: BLE001 - the real call runs next and reports it in full
        logger.debug("inception_fast: compiling ahead stopped: %s", err)
        return None
    if counts is not None and counts.processes:
        seconds = time.perf_counter() - start
        print(f"inception_fast: compiled {counts.variants} kernel variants in {seconds:.1f} s "
              f"({counts.in_workers} in {counts.processes} processes)", file=sys.stderr, flush=True)
        for failure in counts.failures:
            logger.debug("inception_fast: compiled in this process instead: %s", failure)
    return counts
