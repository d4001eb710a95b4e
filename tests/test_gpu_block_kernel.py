"""The `triton-block` backend on the GPU: the persistent block kernel (one launch per block,
tiles of later stages waiting on counters in global memory) held to the checks of the other
kernel backends, plus what a persistent kernel can get wrong: races (repeated launches must be
bit for bit equal), counters that do not reset (repeated launches, CUDA-graph replays), and
deadlock when few programs are resident (a grid of 1 to 3 programs, in a subprocess with a
deadline, must give the same bits as the full grid).

    python -m pytest tests/test_gpu_block_kernel.py
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from gpu_blocks import (
    BLOCKS,
    LOW_PRECISION,
    assert_follows_the_tf32_switch,
    block_input,
    make_block,
    two_x_rule,
)

from inception_fast import optimize
from inception_fast.backends import backend_status
from inception_fast.backends import triton_block_backend as tb
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm, relative_l2

pytestmark = pytest.mark.cuda
BACKEND = "triton-block"


def _googlenet_inception():
    from torchvision.models.googlenet import Inception

    return Inception(480, 192, 96, 208, 16, 48, 64)


def _block35():
    from timm.models.inception_resnet_v2 import Block35

    return Block35(scale=0.17)


def _inception_e():
    from torchvision.models.inception import InceptionE

    return InceptionE(2048)


FAMILY = {  # family blocks: factory, input channels, input size in their network
    "googlenet_Inception4a": (_googlenet_inception, 480, 14),
    "irv2_Block35": (_block35, 320, 35),
    "v3_InceptionE": (_inception_e, 2048, 8),
}
ALL_BLOCKS = [*BLOCKS, *FAMILY]


@pytest.fixture(autouse=True)
def heuristic_tiles(monkeypatch):
    """Correctness does not depend on timing tile configs: take the heuristic, tune nothing."""
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "0")


@pytest.fixture(autouse=True, scope="module")
def usable():
    ok, reason = backend_status(BACKEND, "cuda")
    if not ok:
        pytest.fail(f"the {BACKEND} backend must work on a GPU machine: {reason}")


def any_block(name, seed=0):
    """(reference block on the GPU, input channels, input size) for a v4 or a family block."""
    if name in BLOCKS:
        return make_block(name, seed)
    torch.manual_seed(seed)
    factory, cin, size = FAMILY[name]
    return randomize_batchnorm(factory()).eval().cuda(), cin, size


def fused_on(block, dtype, backend=BACKEND):
    fused = fuse_block(block).to(dtype)
    fused.backend = backend
    return fused


def force_config(fused, x, config):
    """Run `fused` on `x` with tile config `config` (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages,
    split-K parts) instead of the chosen one."""
    fused(x)  # packs
    packed = tb._packed(fused, x)
    packed.state.configs[(x.shape[0], x.shape[2], x.shape[3], x.dtype, tb.uses_tf32(x))] = config


@pytest.mark.parametrize("name", ALL_BLOCKS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 3, 32])
@torch.no_grad()
def test_block_matches_reference(name, dtype, batch):
    block, cin, size = any_block(name)
    x = block_input(batch, cin, size, channels_last=batch == 3)
    ref = block(x)
    eager = copy.deepcopy(block).to(dtype)(x.to(dtype))
    torch_out = fused_on(block, dtype, "torch")(x.to(dtype))
    out = fused_on(block, dtype)(x.to(dtype))
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all(), "a channel slice was never written"
    two_x_rule(out, eager, ref)
    two_x_rule(out, torch_out, ref)


@pytest.mark.parametrize("name", ["Stem2", "InceptionB"])
@torch.no_grad()
def test_batch_2048(name):
    """Stem2 at 2048 passes 2**31 elements (64-bit offsets); InceptionB at 2048 has 4 stages of
    thousands of tiles each, more than any grid holds at once."""
    block, cin, size = make_block(name)
    x = block_input(2048, cin, size, torch.float16)
    out = fused_on(block, torch.float16)(x)
    assert torch.isfinite(out).all()
    for lo in (0, 1000, 2047):  # the far end is where a 32-bit offset would wrap
        ref = block(x[lo : lo + 1].float())
        assert relative_l2(out[lo : lo + 1], ref) < 5e-3


@pytest.mark.parametrize("name", ["InceptionB", "ReductionB", "irv2_Block35", "v3_InceptionE"])
@pytest.mark.parametrize("batch", [1, 32])
@torch.no_grad()
def test_repeated_launches_are_bit_for_bit_equal(name, batch):
    """A tile that read its producers' rows before they were stored (a missing or early
    wait) would give different bits from launch to launch; counters that did not reset would
    let a later launch read stale rows, or hang."""
    block, cin, size = any_block(name)
    fused = fused_on(block, torch.float16)
    x = block_input(batch, cin, size, torch.float16)
    first = fused(x)
    for _ in range(30):
        assert torch.equal(fused(x), first)


@pytest.mark.parametrize("config", [
    (64, 64, 64, 4, 4, 1), (64, 64, 64, 4, 4, 4), (64, 128, 64, 4, 4, 2), (128, 128, 64, 8, 3, 1),
], ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("name", ["InceptionB", "irv2_Block35"])
@torch.no_grad()
def test_tile_configs_and_split_k(name, config):
    block, cin, size = any_block(name)
    x = block_input(1, cin, size)
    ref = block(x)
    fused = fused_on(block, torch.float16)
    force_config(fused, x.half(), config)
    out = fused(x.half())
    two_x_rule(out, fused_on(block, torch.float16, "torch")(x.half()), ref)
    for _ in range(10):
        assert torch.equal(fused(x.half()), out)


@torch.no_grad()
def test_cuda_graph_capture_and_replay():
    block, cin, size = make_block("InceptionA")
    fused = fused_on(block, torch.float16)
    static_x = block_input(3, cin, size, torch.float16)
    fused(static_x)  # packs and allocates its counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fused(static_x)
    for seed in range(3):
        torch.manual_seed(seed)
        static_x.copy_(block_input(3, cin, size, torch.float16))
        graph.replay()
        torch.testing.assert_close(static_out, fused(static_x), rtol=0, atol=0)


@torch.no_grad()
def test_a_capture_at_a_shape_never_run_says_to_warm_up_first():
    """The schedule of a new shape is a host-to-device copy, which a capture cannot hold: a
    clear error, not PyTorch's about pinned memory."""
    block, cin, size = make_block("InceptionA")
    fused = fused_on(block, torch.float16)
    fused(block_input(3, cin, size, torch.float16))  # packed, at batch 3 only
    x = block_input(5, cin, size, torch.float16)
    with pytest.raises(RuntimeError, match="call the model once at this shape outside the capture first"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            fused(x)
    assert relative_l2(fused(x), fused_on(block, torch.float16, "torch")(x)) < 5e-3  # and runs after


FEW_PROGRAMS = r"""
import sys
import torch
sys.path.insert(0, sys.argv[1])
from test_gpu_block_kernel import any_block, fused_on
from gpu_blocks import block_input
from inception_fast.backends import triton_block_backend as tb

with torch.no_grad():
    for name in ("InceptionB", "ReductionB", "irv2_Block35", "InceptionC"):
        block, cin, size = any_block(name)
        fused = fused_on(block, torch.float16)
        for batch in (3, 32):
            x = block_input(batch, cin, size, torch.float16)
            tb.GRID_LIMIT = None
            full = fused(x)
            for limit in (1, 2, 3):
                tb.GRID_LIMIT = limit
                out = fused(x)
                torch.cuda.synchronize()
                assert torch.equal(out, full), (name, batch, limit)
                print(name, batch, limit, "ok", flush=True)
"""


def test_a_handful_of_programs_finish_without_deadlock():
    """Tiles wait only for tiles with smaller tickets, which running programs hold: a grid of 1,
    2 or 3 programs finishes every block (a deadlock would hang: a subprocess with a deadline)."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, INCEPTION_FAST_AUTOTUNE="0")
    try:
        result = subprocess.run([sys.executable, "-c", FEW_PROGRAMS, tests_dir], env=env, capture_output=True,
                                text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no result after 300 s (a deadlock?); last output: {(err.stdout or '')[-2000:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(" ok") == 4 * 2 * 3


@torch.no_grad()
def test_exact_fp32_follows_the_tf32_switch():
    block, cin, size = make_block("InceptionB")
    x = block_input(4, cin, size)
    ref = block.double()(x.double())
    fused = fused_on(block.float(), torch.float32)
    assert_follows_the_tf32_switch(fused, x, ref)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 5])
@torch.no_grad()
def test_whole_model(calibrated_model, dtype, batch):
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(batch, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).to(dtype)(x.to(dtype))
    fused = optimize(model, backend=BACKEND, dtype=dtype, cuda_graph=True)
    out = fused(x.to(dtype))
    two_x_rule(out, eager, ref)
    torch.testing.assert_close(fused(x.to(dtype)), fused.run_eager(x.to(dtype)), rtol=0, atol=0)


@torch.no_grad()
def test_torch_compile_fullgraph():
    block, cin, size = make_block("InceptionA")
    fused = fused_on(block, torch.float16)
    x = block_input(2, cin, size, torch.float16)
    expected = fused(x)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


@torch.no_grad()
def test_auto_times_triton_block(monkeypatch, fresh_backend_choices):
    from inception_fast.backends import auto_backend

    # An opt-in candidate of auto until its race tests have run on a device.
    monkeypatch.setattr(auto_backend, "CANDIDATES", ("triton", "cuda", "triton-block", "torch"))
    monkeypatch.setattr(auto_backend, "_usable_on", {})
    block, cin, size = make_block("InceptionB")
    fused = fused_on(block, torch.float16, "auto")
    x = block_input(1, cin, size, torch.float16)
    out = fused(x)
    assert relative_l2(out, fused_on(block, torch.float16, "torch")(x)) < 5e-3
    (row,) = auto_backend.choice_table()
    assert BACKEND in row["ms"] and row["ms"][BACKEND] < float("inf"), row
