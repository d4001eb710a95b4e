"""Launches that only compile: under `compiling_only(workers)`, every Triton launch of `ops`
hands its kernel variant to a pool of `workers` threads to compile (Triton's
AsyncCompileMode; the compile itself runs in worker processes, `compile_processes`) and
launches nothing; leaving the block waits for every compile and raises the first error. A
first call at a new input shape otherwise compiles its variants one after another as its
launches come, seconds each (`inception_fast.compile_ahead` runs a whole forward this way
first).

While it is active, nothing may be timed or remembered from the launches (their outputs are
never written): `active()` is what the tuning and `auto` consult.
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .. import launch_record
from .relaunch import Relauncher

_active = contextvars.ContextVar("inception_fast_compiling_only", default=False)


def active() -> bool:
    return _active.get()


class _CompileOnly:
    """`kernel[grid](*args, **kwargs)` that compiles the variant those arguments select
    (`JITFunction.warmup`) instead of launching it."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel.warmup(*args, grid=grid, **kwargs)


_relaunchers: dict = {}  # kernel -> its Relauncher
ENV_RELAUNCH = "INCEPTION_FAST_RELAUNCH"


def launcher(kernel):
    """`kernel`'s launcher (`relaunch.Relauncher`: a variant launched before skips Triton's
    binding; INCEPTION_FAST_RELAUNCH=0: Triton binds every launch), or its compile-only stand-in
    while `compiling_only` is active."""
    if _active.get():
        return _CompileOnly(kernel)
    setting = os.environ.get(ENV_RELAUNCH, "1")
    if setting != "1":
        if setting != "0":
            raise ValueError(f"{ENV_RELAUNCH}={setting!r}: use 1 (relaunch known variants, the default) or 0")
        # Triton binds this launch itself: nothing notes it, so a recording cannot replay the call.
        launch_record.note_unreplayable(f"{ENV_RELAUNCH}=0: a Triton launch bound by Triton")
        return kernel
    found = _relaunchers.get(kernel)
    if found is None:
        found = _relaunchers[kernel] = Relauncher(kernel)
    return found


@contextmanager
def compiling_only(workers: int):
    """Launches inside compile only, `workers` at a time (threads, each new variant compiled in
    a worker process first: `compile_processes`) where this Triton can compile asynchronously,
    else one after another. Yields the `CompileCounts`, complete once the block is left."""
    try:
        from .compile_processes import CompileCounts, InWorkers, WorkerPool
    except ImportError:  # an older Triton: the variants still compile here, just not in parallel
        InWorkers = None
    token = _active.set(True)
    try:
        if InWorkers is None or workers < 2:
            yield None
        else:
            counts = CompileCounts()
            pool = WorkerPool(workers, counts)
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="inception_fast-compile") as threads:
                    with InWorkers(threads, pool, counts):
                        yield counts
            finally:
                pool.close()
    finally:
        _active.reset(token)
