"""Triton compiles in worker processes, for `compile_only`: Triton's asynchronous compile mode
runs each new kernel variant's compile on a thread, but a compile holds the GIL through most of
its passes, so 16 threads gave 1.8x. Here a variant that is not in Triton's on-disk cache is
first compiled by a `compile_worker` process (started on demand, at most one per thread), and
the thread then runs Triton's own compile, which finds it on disk. A variant a worker cannot
compile (its module does not import there, its arguments do not pickle, its cache key differs
there) still compiles on the thread, so the outcome is Triton's in every case; only where the
work happens changes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from triton.runtime._async_compile import AsyncCompileMode

from . import compile_worker

JOB_TIMEOUT_S = 600.0  # a worker silent this long is stopped and its variant compiled here


@dataclass
class CompileCounts:
    """What a compile-only pass compiled, and where."""

    variants: int = 0  # new variants submitted
    in_workers: int = 0  # compiled by a worker process
    processes: int = 0  # worker processes started
    failures: list[str] = field(default_factory=list)  # why a worker did not compile a variant


class WorkerPool:
    """Up to `most` `compile_worker` processes, started as jobs need them; `compile` is called
    from at most `most` threads at once."""

    def __init__(self, most: int, counts: CompileCounts):
        self.most, self.counts = most, counts
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._started: list[subprocess.Popen] = []
        self._stopped = 0
        self._lock = threading.Lock()

    def compile(self, job: bytes) -> None:
        worker = None if self._broken() else self._take()
        if worker is None:
            return
        try:
            worker.stdin.write(job)
            worker.stdin.flush()
            ready, _, _ = select.select([worker.stdout], [], [], JOB_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no answer in {JOB_TIMEOUT_S:.0f} s")
            reply = compile_worker.receive(worker.stdout)
            if reply is None:
                raise EOFError(f"it exited with {worker.poll()}")
        except (OSError, EOFError, TimeoutError, pickle.UnpicklingError) as err:
            worker.kill()  # not given back: the next job starts another
            with self._lock:
                self._started.remove(worker)
                self._stopped += 1
                self.counts.failures.append(f"a compile worker stopped: {err}")
            self._idle.put(None)  # wakes a thread waiting for a worker, to start one
            return
        self._idle.put(worker)
        failure = reply[1]
        with self._lock:
            if failure is None:
                self.counts.in_workers += 1
            else:
                self.counts.failures.append(failure)

    def _broken(self) -> bool:
        """Workers that keep stopping (they cannot start here): compile on the threads."""
        return self._stopped > self.most

    def _take(self) -> subprocess.Popen | None:
        while not self._broken():
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                worker = None
            if worker is not None:
                return worker
            with self._lock:
                if len(self._started) < self.most:
                    if self.counts.processes == 0:
                        print(f"inception_fast: compiling new Triton kernel variants in up to {self.most} "
                              "processes (once: Triton keeps them on disk)", file=sys.stderr, flush=True)
                    worker = _start_worker()
                    self._started.append(worker)
                    self.counts.processes += 1
                    return worker
            worker = self._idle.get()
            if worker is not None:
                return worker
        return None

    def close(self) -> None:
        for worker in self._started:
            worker.stdin.close()  # its loop ends at the end of its input
        deadline = time.monotonic() + 5.0
        for worker in self._started:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def worker_environment() -> dict[str, str]:
    """The environment a compile worker runs in: the same modules and the same cache as this
    process, and no GPU (compiling needs none)."""
    from triton import knobs

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    env["TRITON_CACHE_DIR"] = knobs.cache.dir
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _start_worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", compile_worker.__name__], env=worker_environment(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            bufsize=0)


def _framed(obj) -> bytes | None:
    try:
        return compile_worker.frame(obj)
    except Exception:  # noqa: BLE001 - a constant that does not pickle: compiled here instead
        return None


def _on_disk(key: str, src) -> bool:
    """Whether Triton's cache already holds the variant with this cache key (its compile then
    only loads it), as `triton.compile` looks it up."""
    from triton.runtime.cache import get_cache_manager

    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return get_cache_manager(digest).get_group(f"{src.name[:150]}.json") is not None


def _worker_job(key: str, compile_fn) -> bytes | None:
    """The framed job for the variant `compile_fn` (Triton's asynchronous compile closure)
    compiles, or None where a worker cannot or need not do it."""
    code = getattr(compile_fn, "__code__", None)
    cells = dict(zip(code.co_freevars, compile_fn.__closure__ or ())) if code else {}
    try:
        src, target, options, env_vars = (cells[name].cell_contents
                                          for name in ("src", "target", "options", "env_vars"))
        if _on_disk(key, src):
            return None
        return _framed(compile_worker.job(src, target, options, env_vars, key))
    except (KeyError, ValueError, AttributeError):  # another Triton's closure: compiled here
        return None


class InWorkers(AsyncCompileMode):
    """Triton's asynchronous compile mode on `executor`'s threads, each new variant compiled
    by a worker process of `pool` first where one can."""

    def __init__(self, executor, pool: WorkerPool, counts: CompileCounts):
        super().__init__(executor)
        self.pool, self.counts = pool, counts

    def submit(self, key, compile_fn, finalize_fn):
        if key in self.future_kernels:
            return self.future_kernels[key]
        self.counts.variants += 1
        job = _worker_job(key, compile_fn)
        if job is None:
            return super().submit(key, compile_fn, finalize_fn)
        pool = self.pool

        def in_a_worker_first():
            pool.compile(job)
            return compile_fn()  # loads it from the disk where the worker compiled it

        return super().submit(key, in_a_worker_first, finalize_fn)
