"""A first call's Triton kernels compile side by side before it runs (`compile_ahead`), in a
pass whose launches only compile and in which nothing is timed or remembered."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import two_x_rule

from inception_fast import compile_ahead, optimize
from inception_fast import reference as R
from inception_fast.backends import auto_backend
from inception_fast.kernels.triton import compile_only, tuning
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm


class FakeKernel:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(("launch", grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        self.calls.append(("compile", grid, args, kwargs))


def test_launches_only_compile_inside_and_launch_again_after():
    kernel = FakeKernel()
    compile_only.launcher(kernel)[(4,)](1, BLOCK=2)
    with compile_only.compiling_only(workers=1):
        assert compile_only.active() and not tuning.can_time()
        compile_only.launcher(kernel)[(8,)](3, BLOCK=4)
    assert not compile_only.active() and tuning.can_time()
    compile_only.launcher(kernel)[(2,)](5)
    assert [call[:2] for call in kernel.calls] == [("launch", (4,)), ("compile", (8,)), ("launch", (2,))]
    assert kernel.calls[1][2:] == ((3,), {"BLOCK": 4})


def test_the_flag_is_reset_when_the_pass_fails():
    with pytest.raises(RuntimeError, match="boom"), compile_only.compiling_only(workers=1):
        raise RuntimeError("boom")
    assert not compile_only.active()


def test_workers_setting(monkeypatch):
    monkeypatch.delenv(compile_ahead.ENV_WORKERS, raising=False)
    assert 1 <= compile_ahead.workers() <= 16
    monkeypatch.setenv(compile_ahead.ENV_WORKERS, "0")
    assert compile_ahead.workers() == 0
    monkeypatch.setenv(compile_ahead.ENV_WORKERS, "many")
    with pytest.raises(ValueError, match="INCEPTION_FAST_COMPILE_WORKERS='many': give a number"):
        compile_ahead.workers()


def test_the_pass_runs_on_scratch_in_compile_only_mode_and_never_raises(monkeypatch):
    monkeypatch.setattr(compile_ahead, "workers", lambda: 2)
    serial = compile_only.compiling_only  # Triton's asynchronous mode has nothing to compile on a CPU
    monkeypatch.setattr(compile_only, "compiling_only", lambda workers: serial(1))
    seen = []

    def run(t):
        seen.append((t.shape, t.dtype, compile_only.active()))
        raise RuntimeError("a kernel that does not compile")  # the real call reports it

    x = torch.ones(3, 8, 5, 5, dtype=torch.float16)
    compile_ahead.compile_ahead(run, x)
    assert seen == [(x.shape, x.dtype, True)] and not compile_only.active()
    monkeypatch.setattr(compile_ahead, "workers", lambda: 0)  # off: nothing runs
    compile_ahead.compile_ahead(run, x)
    assert len(seen) == 1


def test_wanted_only_for_cuda_inputs_of_triton_backends():
    cpu = torch.empty(1)
    assert not compile_ahead.wanted({"triton"}, cpu)
    meta_cuda = torch.empty(1, device="meta")  # not CUDA either
    assert not compile_ahead.wanted({"auto"}, meta_cuda)


def test_optimize_starts_hashing_triton_for_triton_backends_on_a_gpu(monkeypatch):
    """The digest every first Triton lookup waits for starts in the background at optimize()
    (for GPU backends with Triton kernels only), and computes the key the cache uses."""
    started = []

    class Recorder:
        def __init__(self, target, name, daemon):
            started.append((target, name, daemon))

        def start(self):
            pass

    monkeypatch.setattr(compile_ahead.threading, "Thread", Recorder)
    compile_ahead.start_hashing_triton("torch", "cuda")
    compile_ahead.start_hashing_triton("triton", "cpu")
    assert started == []
    compile_ahead.start_hashing_triton("auto", "cuda")
    compile_ahead.start_hashing_triton("triton-gemm", torch.device("cuda", 0))
    assert [daemon for _, _, daemon in started] == [True, True]
    from triton.runtime.cache import triton_key

    triton_key.cache_clear()
    started[0][0]()
    assert triton_key.cache_info().currsize == 1


def test_auto_in_a_compile_only_pass_runs_what_the_real_call_will_and_keeps_nothing(monkeypatch):
    """The candidates the real call will time run (their kernels compile); with every time
    known, only the choice runs; no choice is timed, cached or kept on the block."""
    ran = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run_block(self, block, x):
            ran.append(self.name)
            return self.name

    fakes = {"triton": Fake("triton"), "cuda": Fake("cuda"), "torch": Fake("torch")}
    monkeypatch.setattr(auto_backend, "_backends", lambda block, device: fakes)
    monkeypatch.setattr(auto_backend, "_known", lambda kind, x, usable: ("key", {}, list(usable)))
    monkeypatch.setattr(auto_backend, "_median_ms", lambda run, x: pytest.fail("timed in the pass"))
    block = fuse_block(randomize_batchnorm(R.InceptionA().eval()))
    x = torch.empty(3, 384, 7, 7)
    with compile_only.compiling_only(workers=1):
        auto_backend.run_block(block, x)
    assert ran == ["triton", "cuda", "torch"]
    assert not any(key[0] == "auto" for key in block.backend_cache if isinstance(key, tuple))
    ran.clear()
    monkeypatch.setattr(auto_backend, "_known", lambda kind, x, usable: ("key", {"triton": 2.0, "cuda": 1.0,
                                                                                   "torch": 3.0}, []))
    with compile_only.compiling_only(workers=1):
        auto_backend.run_block(block, x)
    assert ran == ["cuda"]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "auto"])
@torch.no_grad()
def test_a_first_call_compiles_nothing_after_the_pass(calibrated_model, monkeypatch, fresh_backend_choices,
                                                      tmp_path, backend):
    """With the kernels' compiled variants dropped and Triton's disk cache empty, the pass
    compiles every variant the call needs (in worker processes), the call itself compiles
    none, and its result keeps the 2x rule."""
    import triton.runtime.jit as jit

    from inception_fast.kernels.triton import block_kernel, layout_kernel, stage_kernel, tma_conv_kernel

    compiled = []
    real = jit.JITFunction._do_compile

    def counting(self, *args, **kwargs):
        compiled.append(compile_only.active())
        return real(self, *args, **kwargs)

    passes = []
    real_ahead = compile_ahead.compile_ahead
    monkeypatch.setattr(compile_ahead, "compile_ahead", lambda run, x: passes.append(real_ahead(run, x)))
    monkeypatch.setattr(jit.JITFunction, "_do_compile", counting)
    for kernel in (stage_kernel._stage_kernel, tma_conv_kernel._tma_stage_kernel, block_kernel._block_kernel,
                   layout_kernel._to_nhwc_padded_kernel):
        kernel.device_caches.clear()  # compiled in memory by earlier tests
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))  # and on disk
    monkeypatch.setenv(compile_ahead.ENV_WORKERS, "8")
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    fused = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=False)
    out = fused(x.half())
    assert compiled and all(compiled), f"{compiled.count(False)} of {len(compiled)} compiles came in the call"
    [counts] = passes
    assert counts.variants > 0 and counts.in_workers == counts.variants, counts
    assert 1 <= counts.processes <= 8 and counts.failures == []
    two_x_rule(out, eager, ref)
    compiled.clear()
    fused(x.half())  # the same shape again: no second pass
    assert compiled == [] and len(passes) == 1
