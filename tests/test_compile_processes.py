"""Kernel variants compiled in worker processes (`compile_processes`, `compile_worker`): a
worker puts the variant into Triton's disk cache under the key the asking process computed,
refuses one whose key differs there, and workers that cannot start leave the compiling to the
threads."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
compile_processes = pytest.importorskip("inception_fast.kernels.triton.compile_processes")

from inception_fast.kernels.triton import compile_worker  # noqa: E402


@pytest.fixture
def variant(tmp_path, monkeypatch):
    """(src, target, options, env_vars, key) of one variant of a small kernel for an H100,
    with an empty Triton cache (compiling needs no GPU)."""
    from tiny_triton_kernel import add_one
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.cache import get_cache_key

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    src = ASTSource(add_one, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {(2,): 64}, {})
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    options = backend.parse_options({})
    env_vars = get_cache_invalidating_env_vars()
    return src, target, options, env_vars, get_cache_key(src, backend, options, env_vars)


def framed(src, target, options, env_vars, key) -> bytes:
    return compile_processes._framed(compile_worker.job(src, target, options, env_vars, key))


def test_a_worker_compiles_into_the_cache_under_the_key_asked(variant):
    src, target, options, env_vars, key = variant
    assert not compile_processes._on_disk(key, src)
    counts = compile_processes.CompileCounts()
    pool = compile_processes.WorkerPool(2, counts)
    try:
        pool.compile(framed(*variant))
        pool.compile(framed(src, target, options, env_vars, key + "-other"))
    finally:
        pool.close()
    assert counts.processes == 1  # the second job reused the idle worker
    assert counts.in_workers == 1
    assert counts.failures == ["add_one: this process would compile it under another cache key"]
    assert compile_processes._on_disk(key, src)
    kernel = triton.compile(src, target=target, options=options.__dict__, _env_vars=env_vars)
    assert kernel.hash == hashlib.sha256(key.encode()).hexdigest()


def test_workers_that_cannot_start_leave_the_compiling_to_the_threads(variant, monkeypatch):
    started = []

    def failing_worker():
        started.append(1)
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0)

    monkeypatch.setattr(compile_processes, "_start_worker", failing_worker)
    counts = compile_processes.CompileCounts()
    pool = compile_processes.WorkerPool(2, counts)
    job = framed(*variant)
    for _ in range(6):
        pool.compile(job)  # returns: the thread compiles it itself
    pool.close()
    assert len(started) == 3 and counts.in_workers == 0  # given up after more stops than workers
    assert all(failure.startswith("a compile worker stopped") for failure in counts.failures)
    assert not compile_processes._on_disk(variant[4], variant[0])


def test_a_constant_that_does_not_pickle_is_compiled_in_the_asking_process(variant):
    src, target, options, env_vars, key = variant
    src.constants[(1,)] = lambda: None
    assert framed(src, target, options, env_vars, key) is None


def test_the_worker_protocol_round_trips_and_ends_at_the_end_of_input():
    import io

    stream = io.BytesIO()
    compile_worker.send(stream, ("compiled", None))
    compile_worker.send(stream, {"a": (1, 2)})
    stream.seek(0)
    assert compile_worker.receive(stream) == ("compiled", None)
    assert compile_worker.receive(stream) == {"a": (1, 2)}
    assert compile_worker.receive(stream) is None
    stream = io.BytesIO(compile_worker.frame("a longer message")[:10])
    with pytest.raises(EOFError, match="inside a message"):
        compile_worker.receive(stream)


def tritons_closure(src, target, options, env_vars):
    """A compile closure shaped as Triton's asynchronous mode makes it (`JITFunction._do_compile`):
    the variant's source, target, options and cache-invalidating settings in its cells."""
    def async_compile():
        return triton.compile(src, target=target, options=options.__dict__, _env_vars=env_vars)

    return async_compile


def test_the_mode_sends_a_new_variant_to_a_worker_then_loads_it(variant):
    from concurrent.futures import ThreadPoolExecutor

    src, target, options, env_vars, key = variant
    counts = compile_processes.CompileCounts()
    pool = compile_processes.WorkerPool(2, counts)
    finalized = []
    try:
        with ThreadPoolExecutor(2) as threads, compile_processes.InWorkers(threads, pool, counts) as mode:
            closure = tritons_closure(src, target, options, env_vars)
            future = mode.submit(key, closure, finalized.append)
            assert mode.submit(key, closure, finalized.append) is future  # one compile per variant
    finally:
        pool.close()
    assert (counts.variants, counts.in_workers, counts.processes, counts.failures) == (1, 1, 1, [])
    assert finalized[0].hash == hashlib.sha256(key.encode()).hexdigest()


def test_a_variant_already_on_disk_or_from_another_closure_stays_in_this_process(variant):
    src, target, options, env_vars, key = variant
    closure = tritons_closure(src, target, options, env_vars)
    assert compile_processes._worker_job(key, closure) is not None
    closure()  # now on disk: loading it here is cheaper than a worker's start
    assert compile_processes._worker_job(key, closure) is None
    assert compile_processes._worker_job(key, lambda: None) is None
