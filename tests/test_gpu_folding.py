"""Folding on the GPU (what optimize(model, device="cuda") does with a model on the CPU) gives
the same float64 parameters as folding on the CPU, bit for bit, and refresh() folds where the
fused network lives."""

from __future__ import annotations

import copy

import pytest
import torch

from inception_fast import optimize
from inception_fast.compiler import CompiledBlock, compile_model

pytestmark = pytest.mark.cuda


def _params(compiled):
    return [t for step in compiled.steps if isinstance(step, CompiledBlock) for param in step.params
            if param is not None for t in (param if isinstance(param, tuple) else (param,))]


@torch.no_grad()
def test_gpu_folding_equals_cpu_folding(calibrated_model):
    on_cpu = _params(compile_model(calibrated_model))
    on_gpu = _params(compile_model(calibrated_model, torch.device("cuda")))
    assert len(on_cpu) == len(on_gpu) > 0
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


@torch.no_grad()
def test_optimize_from_a_cpu_model_matches_a_gpu_model(calibrated_model):
    x = torch.randn(2, 3, 299, 299, device="cuda", dtype=torch.float16)
    from_cpu = optimize(calibrated_model, dtype=torch.float16, device="cuda", backend="triton")
    from_gpu = optimize(copy.deepcopy(calibrated_model).cuda(), dtype=torch.float16, backend="triton")
    for a, b in zip(from_cpu.buffers(), from_gpu.buffers()):
        assert a.is_cuda
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(from_cpu(x), from_gpu(x), rtol=0, atol=0)
    from_cpu.refresh(calibrated_model)  # folds on the GPU, where from_cpu lives
    torch.testing.assert_close(from_cpu(x), from_gpu(x), rtol=0, atol=0)
