"""Kernel variants compiled in worker processes (`compile_processes`, `compile_worker`): a
worker puts the variant into Triton's disk cache under the key the asking process computed,
refuses one whose key differs there, and workers that cannot start leave the compiling to the
threads."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

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


# The modules that define the Triton kernels the package compiles ahead (the launches of
# `ops`) and the JIT functions they call: a compile worker imports them, and must not import
# torch (seconds of a cold first call).
KERNEL_MODULES = (
    "inception_fast.kernels.triton.stage_kernel",
    "inception_fast.kernels.triton.block_kernel",
    "inception_fast.kernels.triton.tma_conv_kernel",
    "inception_fast.kernels.triton.layout_kernel",
    "inception_fast.kernels.triton.tf32",
)


def test_the_kernel_modules_and_the_worker_import_without_torch():
    imports = "".join(f"import {module}\n" for module in (*KERNEL_MODULES, compile_worker.__name__))
    code = imports + "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    run = subprocess.run([sys.executable, "-c", code], env=compile_processes.worker_environment(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"importing the kernel modules imported torch: {run.stdout[:300]}"


def launched_kernels() -> list:
    """Every Triton kernel `ops` launches: the `_*_kernel` names it imports, at its top or inside
    the launch functions (the experimental kernels are imported where used)."""
    import ast
    import importlib

    from inception_fast.kernels.triton import ops

    tree = ast.parse(Path(ops.__file__).read_text())
    kernels = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            module = importlib.import_module(f"inception_fast.kernels.triton.{node.module}")
            kernels += [getattr(module, alias.name) for alias in node.names
                        if alias.name.startswith("_") and alias.name.endswith("_kernel")]
    return kernels


def test_the_kernels_compiled_ahead_are_defined_in_those_modules():
    from triton.runtime.jit import JITFunction

    launched = launched_kernels()
    assert len(launched) == 4 and all(isinstance(kernel, JITFunction) for kernel in launched)
    assert {kernel.__module__ for kernel in launched} <= set(KERNEL_MODULES)


# Argument types of the package kernels' pointers by name (the rest are fp16 tensors), as their
# launches pass them.
POINTER_TYPES = {"bias_ptr": "*fp32", "col_dst_ptr": "*i32", "col_flags_ptr": "*i32", "prob_ptr": "*i64",
                 "scratch_ptr": "*fp32", "count_ptr": "*i32", "sched_ptr": "*i32", "deps_ptr": "*i32",
                 "counters_ptr": "*i32", "waits_ptr": "*i32"}


def package_variant(kernel, element="*fp16", **constexprs):
    """The source of one variant of a package kernel: its tensors of `element`, integers i32."""
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else
                 POINTER_TYPES.get(name, element) if name.endswith("_ptr") else "i32"
                 for name in kernel.arg_names}
    return ASTSource(kernel, signature, constexprs, {})


def test_a_worker_compiles_each_package_kernel_without_importing_torch(tmp_path, monkeypatch):
    """Small variants of the four kernels a first call compiles ahead, through one worker that
    writes the names of the modules it imported when it exits."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.cache import get_cache_key

    from inception_fast.kernels.triton import block_kernel, layout_kernel, stage_kernel, tma_conv_kernel

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    tiles = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "INPUT_PRECISION": "ieee", "HAS_RESIDUAL": False,
             "WIDE_INDEX": False}
    sources = [
        package_variant(stage_kernel._stage_kernel, **tiles, HAS_CONV=True, HAS_POOL=False, SPLIT_K=False),
        package_variant(block_kernel._block_kernel, **tiles, HAS_CONV=True, HAS_POOL=False, SPLIT_K=False,
                        RECORD_WAITS=False),
        package_variant(tma_conv_kernel._tma_stage_kernel, **tiles, BOX_W=0, HAS_GEMM=True, HAS_TAPS=False,
                        TAP_MASK=False, FLATTEN=False, ROWS=False),
        package_variant(layout_kernel._to_nhwc_padded_kernel, "*fp32", C_PAD=8, BLOCK_C=8, BLOCK_P=128,
                        ROUND_TF32=True),
    ]
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    options = backend.parse_options({})
    env_vars = get_cache_invalidating_env_vars()
    keys = [get_cache_key(src, backend, options, env_vars) for src in sources]
    jobs = b"".join(framed(src, target, options, env_vars, key) for src, key in zip(sources, keys))
    modules = tmp_path / "modules.txt"
    worker = (f"import atexit, runpy, sys\n"
              f"atexit.register(lambda: open({str(modules)!r}, 'w').write('\\n'.join(sys.modules)))\n"
              f"runpy.run_module({compile_worker.__name__!r}, run_name='__main__', alter_sys=True)")
    run = subprocess.run([sys.executable, "-c", worker], input=jobs, capture_output=True, timeout=300,
                         env=compile_processes.worker_environment())
    replies = io.BytesIO(run.stdout)
    assert [compile_worker.receive(replies) for _ in sources] == [("compiled", None)] * 4, run.stderr[-2000:]
    assert all(compile_processes._on_disk(key, src) for src, key in zip(sources, keys))
    imported = modules.read_text().split()
    assert {src.fn.__module__ for src in sources} <= set(imported)
    assert [module for module in imported if module.split(".")[0] == "torch"] == []


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


def test_a_worker_keys_by_this_process_ptxas_version_after_the_ptxas_path_changed(variant, monkeypatch):
    """torch.compile's Inductor points TRITON_PTXAS_PATH at torch's own ptxas on its first
    compile, after this process's Triton has keyed variants by the ptxas it asked first (Triton
    asks once per process): a worker started then still keys and stores each variant as asked."""
    import shutil

    from triton.backends.nvidia.compiler import get_ptxas_version

    src, target, _, _, key = variant  # keyed by the ptxas Triton found first
    keyed = get_ptxas_version(target.arch)
    other = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    try:
        version = subprocess.check_output([other, "--version"], text=True)
    except OSError:
        pytest.skip("no second ptxas (a CUDA toolkit's) to point TRITON_PTXAS_PATH at")
    if version == keyed:
        pytest.skip(f"{other} is the ptxas Triton keys by here")
    monkeypatch.setenv("TRITON_PTXAS_PATH", other)
    counts = compile_processes.CompileCounts()
    pool = compile_processes.WorkerPool(1, counts)
    try:
        pool.compile(framed(*variant))
    finally:
        pool.close()
    assert counts.failures == [] and counts.in_workers == 1
    assert compile_processes._on_disk(key, src)


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
