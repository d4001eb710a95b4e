"""The `cuda-gemm` backend's run_block on the CPU in float64, with both of its ops emulated: the
GEMM op as its contract says (ReLU(x @ weight.T + bias) into channels [col_offset, col_offset
+ N) of `out`, after the op's own argument checks) and the stage kernel by
test_cuda_kernel_emulation's model of it. The buffers each launch gets, the channel offsets,
the weight rows and the order of launches are so checked against the `torch` backend without a
GPU; the GPU runs the real ops in test_gpu_cuda_gemm.py."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from test_cuda_kernel_emulation import Emulator, _family_block
from torch import nn

from inception_fast import extension, optimize
from inception_fast import packing as pk
from inception_fast.backends import cuda_backend, torch_backend
from inception_fast.backends import cuda_gemm_backend as gemm
from inception_fast.kernels.triton.launch_state import round_to_tf32
from inception_fast.modules import fuse_block
from inception_fast.reference import InceptionV4
from inception_fast.testing import randomize_batchnorm, relative_l2


def _flat(t: torch.Tensor) -> np.ndarray:
    """A flat NumPy view of an NHWC-contiguous buffer: the emulator's writes land in `t`."""
    array = t.numpy().reshape(-1)
    assert np.shares_memory(array, t.numpy())
    return array


def emulated_stage(inp, work, out, problems, weights, bias, col_dst, col_flags):
    rows = [list(problems[i:i + pk.NUM_FIELDS]) for i in range(0, len(problems), pk.NUM_FIELDS)]
    n, h, w, c = inp.shape
    has_work = work.numel() > 0
    bufs = {pk.BUF_INPUT: _flat(inp), pk.BUF_WORK: _flat(work) if has_work else np.zeros(0),
            pk.BUF_OUTPUT: _flat(out)}
    dims = {pk.BUF_INPUT: (c, h, w), pk.BUF_WORK: (work.shape[3] if has_work else 0, h, w),
            pk.BUF_OUTPUT: (out.shape[3], out.shape[1], out.shape[2])}
    tables = (weights.numpy(), bias.double().numpy(), col_dst.numpy(), col_flags.numpy())
    Emulator(bufs, dims, *tables, n).run(rows)


class EmulatedGemm:
    """The GEMM op's checks (bindings.cpp: check_gemm_conv1x1) and result, counting its calls."""

    def __init__(self):
        self.calls = 0
        self.tf32 = set()  # the tf32 flags it was called with
        self.sm_limits = []  # the SM limits it was called with, in order
        self.split_k = []  # the split counts, in order
        self.tile_m = set()  # the tile heights it was called with

    def __call__(self, x, weight, bias, out, col_offset, relu, tile_n=0, tf32=False, sm_limit=0, split_k=0,
                 tile_m=0):
        k, n = x.shape[-1], weight.shape[0]
        assert sm_limit >= 0
        assert 0 <= split_k <= 8
        assert split_k < 2 or (not tf32 and tile_n in (0, 64) and tile_m in (0, 128)), "split-K: 128 x 64"
        assert tile_n in (0, 64, 128, 256) and tile_m in (0, 64, 128)
        assert tile_m != 64 or (tile_n in (0, 64) and not tf32), "64-row tiles: 64 wide, no TF32"
        self.tile_m.add(tile_m)
        self.split_k.append(split_k)
        self.sm_limits.append(sm_limit)
        assert tf32 == (x.dtype == torch.float32), "fp32 runs on TF32 only, and only fp32 does"
        if tf32:
            assert_tf32_values(weight)
        self.tf32.add(tf32)
        assert x.is_contiguous() and weight.is_contiguous() and out.is_contiguous() and bias.is_contiguous()
        assert weight.shape == (n, k) and bias.shape == (n,) and bias.dtype == torch.float32
        assert weight.dtype == x.dtype == out.dtype
        assert out.shape[:-1] == x.shape[:-1], "out must hold x's pixels"
        assert k % 8 == 0 and n % 8 == 0 and col_offset % 8 == 0 and out.shape[-1] % 8 == 0
        assert 0 <= col_offset and col_offset + n <= out.shape[-1]
        value = x.reshape(-1, k) @ weight.T + bias.double()
        value = value.clamp_min(0) if relu else value
        value = round_to_tf32(value.float()) if tf32 else value
        out.view(-1, out.shape[-1])[:, col_offset:col_offset + n] = value
        self.calls += 1


def assert_tf32_values(t: torch.Tensor) -> None:
    """fp32 values with TF32's 10 mantissa bits only, as the TF32 ops must be given weights."""
    assert t.dtype == torch.float32 and (t.contiguous().view(torch.int32) & 0x1FFF == 0).all()


@pytest.fixture
def emulated_ops(monkeypatch):
    """run_block of the cuda-gemm backend, in float64, on the emulated ops; returns the GEMM."""
    gemm_op = EmulatedGemm()
    monkeypatch.setattr(extension, "load", lambda: None)
    monkeypatch.setattr(cuda_backend, "SUPPORTED_DTYPES", (torch.float64,))
    monkeypatch.setattr(gemm, "availability", lambda device=None: (True, "emulated"))
    ops = torch.ops.inception_fast
    monkeypatch.setattr(ops, "cuda_conv_stage", types.SimpleNamespace(default=emulated_stage), raising=False)
    monkeypatch.setattr(ops, "cuda_gemm_conv1x1", types.SimpleNamespace(default=gemm_op), raising=False)
    monkeypatch.setenv("INCEPTION_FAST_POISON", "1")  # a channel never written shows as NaN
    return gemm_op


def planned_launches(block) -> int:
    return sum(len(s.launches) for key, stages in block.backend_cache.items() if key[0] == "cuda-gemm"
               for s in stages)


def check(block, x, gemm_op, min_launches=1):
    got = gemm.run_block(block, x)
    assert not torch.isnan(got).any(), "an output channel was never written"
    assert relative_l2(got, torch_backend.run_block(block, x)) < 1e-12
    assert gemm_op.calls == planned_launches(block) >= min_launches


@pytest.fixture(scope="module")
def v4():
    torch.manual_seed(0)
    return randomize_batchnorm(InceptionV4().eval(), torch.Generator().manual_seed(1))


# (features index, batch, height, width): Mixed4a, InceptionA, ReductionA, InceptionB,
# ReductionB, InceptionC at odd, non-square sizes
V4_CASES = [(4, 1, 9, 8), (6, 3, 7, 6), (10, 1, 9, 7), (11, 1, 6, 7), (18, 1, 9, 9), (19, 2, 3, 4)]


@pytest.mark.parametrize(("index", "batch", "height", "width"), V4_CASES)
def test_inception_v4_blocks(v4, emulated_ops, index, batch, height, width):
    block = fuse_block(v4.features[index]).to(torch.float64)
    x = torch.randn(batch, block.plan.in_channels, height, width, dtype=torch.float64)
    check(block, x, emulated_ops)


def test_inception_v4_classifier(v4, emulated_ops):
    block = optimize(v4, backend="torch").double().blocks[-1]
    check(block, torch.randn(3, 1536, 1, 1, dtype=torch.float64), emulated_ops)


@pytest.mark.parametrize(("name", "path", "hw", "launches"), [
    ("inception_resnet_v2", "repeat.0", (6, 5), 1),  # the residual 1x1 stays on the stage kernel
    ("googlenet", "inception3a", (9, 7), 1),
    ("inception_v3", "Mixed_7c", (5, 6), 1),
])
def test_family_blocks(emulated_ops, name, path, hw, launches):
    block = _family_block(name, path)
    x = torch.randn(2, block.plan.in_channels, *hw, dtype=torch.float64)
    check(block, x, emulated_ops, launches)


def test_padded_network_input(emulated_ops):
    """The 3-channel input is padded to 8 channels: the GEMM reads all 8 (zeros after 3)."""
    torch.manual_seed(0)
    block = fuse_block(nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU()).eval()).double()
    check(block, torch.randn(2, 3, 5, 7, dtype=torch.float64), emulated_ops)
