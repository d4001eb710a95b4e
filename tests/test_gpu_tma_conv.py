"""The TMA conv path on the GPU (INCEPTION_FAST_TMA): every block of Inception-v4,
Inception-ResNet-v2 and Inception-v3 with a stride-1 conv stage, at batch 1, 3, 32 and 256 in
fp16 and bf16, against the `torch` backend and the fp32 block under the 2x rule, with
NaN-poisoned outputs; every tile config the device benchmark times, on the stages that
exercise each path; TF32; a captured CUDA graph; the whole model."""

from __future__ import annotations

import copy

import pytest
import torch
from gpu_blocks import BLOCKS, LOW_PRECISION, block_input, make_block, two_x_rule

from inception_fast import architectures, optimize
from inception_fast import packing as pk
from inception_fast.backends import backend_status
from inception_fast.kernels.triton import tma_conv
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.kernels.triton.tma_conv import TmaConfig, launch_tma_stage
from inception_fast.kernels.triton.tma_conv_kernel import _tma_stage_kernel
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm, relative_l2

pytestmark = pytest.mark.cuda

# Inception-v4's reference blocks with at least one stride-1 conv stage (Stem0, Mixed3a and
# Mixed5a have none: the stage kernel runs them whole).
V4_BLOCKS = ["Stem1", "Stem2", "Mixed4a", "InceptionA", "ReductionA", "InceptionB", "ReductionB",
             "InceptionC"]
# name: (network, submodule, input channels, input size in the network)
NETWORK_BLOCKS = {
    "irv2-conv2d_2a": ("inception_resnet_v2", "conv2d_2a", 32, 149),
    "irv2-conv2d_2b": ("inception_resnet_v2", "conv2d_2b", 32, 147),
    "irv2-conv2d_3b": ("inception_resnet_v2", "conv2d_3b", 64, 73),
    "irv2-conv2d_4a": ("inception_resnet_v2", "conv2d_4a", 80, 73),
    "irv2-mixed_5b": ("inception_resnet_v2", "mixed_5b", 192, 35),
    "irv2-Block35": ("inception_resnet_v2", "repeat.0", 320, 35),
    "irv2-mixed_6a": ("inception_resnet_v2", "mixed_6a", 320, 35),
    "irv2-Block17": ("inception_resnet_v2", "repeat_1.0", 1088, 17),
    "irv2-mixed_7a": ("inception_resnet_v2", "mixed_7a", 1088, 17),
    "irv2-Block8": ("inception_resnet_v2", "repeat_2.0", 2080, 8),
    "irv2-block8-no-relu": ("inception_resnet_v2", "block8", 2080, 8),
    "irv2-conv2d_7b": ("inception_resnet_v2", "conv2d_7b", 2080, 8),
    "v3-Conv2d_2b": ("inception_v3", "Conv2d_2b_3x3", 32, 147),
    "v3-Conv2d_4a": ("inception_v3", "Conv2d_4a_3x3", 80, 73),
    "v3-Mixed_5b": ("inception_v3", "Mixed_5b", 192, 35),
    "v3-Mixed_6a": ("inception_v3", "Mixed_6a", 288, 35),
    "v3-Mixed_6b": ("inception_v3", "Mixed_6b", 768, 17),
    "v3-Mixed_6e": ("inception_v3", "Mixed_6e", 768, 17),
    "v3-Mixed_7a": ("inception_v3", "Mixed_7a", 768, 17),
    "v3-Mixed_7b": ("inception_v3", "Mixed_7b", 1280, 8),
    "v3-Mixed_7c": ("inception_v3", "Mixed_7c", 2048, 8),
}
_SOURCES: dict = {}


@pytest.fixture(autouse=True)
def _triton_works():
    ok, reason = backend_status("triton", "cuda")
    if not ok:
        pytest.fail(f"the triton backend must work on a GPU machine: {reason}")


def network_block(name):
    """(fp32 source block on the GPU with random BN statistics, input channels, size)."""
    network, path, cin, size = NETWORK_BLOCKS[name]
    if network not in _SOURCES:
        torch.manual_seed(0)
        _SOURCES[network] = architectures.create(network)
    block = copy.deepcopy(_SOURCES[network].get_submodule(path))
    torch.manual_seed(1)
    return randomize_batchnorm(block).eval().cuda(), cin, size


def any_block(name):
    return make_block(name) if name in BLOCKS else network_block(name)


def tma_launches(fused) -> int:
    """Stages of `fused` that the TMA kernel ran (its plans are kept in the backend cache)."""
    return sum(
        plan is not None
        for key, plans in fused.backend_cache.items()
        if key[0] == "triton-tma"
        for plan in plans
    )


def _check_block(name, dtype, batch, monkeypatch, mode="split"):
    block, cin, size = any_block(name)
    x = block_input(batch, cin, size, channels_last=batch == 3)
    ref = block(x)
    eager = copy.deepcopy(block).to(dtype)(x.to(dtype))
    fused = fuse_block(block).to(dtype)
    torch_out = fused(x.to(dtype))
    fused.backend = "triton"
    monkeypatch.setenv(tma_conv.ENV_MODE, mode)
    out = fused(x.to(dtype))
    assert tma_launches(fused) > 0, "no stage ran on the TMA kernel"
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all(), "a channel slice was never written (or a NaN came out)"
    two_x_rule(out, eager, ref)
    two_x_rule(out, torch_out, ref)


@pytest.mark.parametrize("batch", [1, 3, 32, 256])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", V4_BLOCKS + list(NETWORK_BLOCKS))
@torch.no_grad()
def test_block_with_tma(name, dtype, batch, monkeypatch):
    _check_block(name, dtype, batch, monkeypatch)


@pytest.mark.parametrize("name", ["Mixed4a", "InceptionB", "irv2-Block17", "v3-Mixed_7b"])
@torch.no_grad()
def test_block_with_tma_on_whole_stages_only(name, monkeypatch):
    """INCEPTION_FAST_TMA=1: mixed stages stay whole on the stage kernel."""
    _check_block(name, torch.float16, 3, monkeypatch, mode="1")


# Every config the device benchmark times (tma_bench.py), on stages that take each path:
# GEMM (with the residual epilogue), FLAT with and without masked rows, valid 3x3 convs.
SWEEP_CONFIGS = [
    TmaConfig(128, 128, 64, 8, 4),
    TmaConfig(128, 128, 64, 8, 4, flatten=0),
    TmaConfig(128, 64, 64, 4, 4),
    TmaConfig(128, 256, 64, 8, 3),
    TmaConfig(128, 128, 64, 8, 3, per_sm=2),
    TmaConfig(128, 128, 32, 8, 4),
    TmaConfig(128, 128, 64, 4, 3),
    TmaConfig(128, 128, 64, 8, 4, box_w=16),
    TmaConfig(128, 128, 64, 8, 4, box_w=8),
    TmaConfig(64, 128, 64, 4, 4),
    TmaConfig(128, 128, 64, 8, 4, rows=1),
    TmaConfig(64, 128, 64, 4, 4, rows=1),
    TmaConfig(128, 128, 64, 8, 4, box_w=8, flatten=0),
]
SWEEP_STAGES = [("InceptionB", 0), ("InceptionB", 2), ("InceptionB", 1), ("Mixed4a", 1),
                ("irv2-Block35", 3), ("InceptionC", 3)]


@pytest.mark.parametrize("config", SWEEP_CONFIGS, ids=[c.label().replace(" ", "_") for c in SWEEP_CONFIGS])
@pytest.mark.parametrize("name,stage_index", SWEEP_STAGES, ids=[f"{n}.{s}" for n, s in SWEEP_STAGES])
@torch.no_grad()
def test_tile_configs(name, stage_index, config):
    """One stage through the TMA kernel (its other rows on the stage kernel) against the same
    stage on the stage kernel alone, from the same inputs."""
    block, cin, size = any_block(name)
    fused = fuse_block(block).half()
    x = block_input(5, cin, size, torch.float16, channels_last=True)
    stages = pk.pack_block(fused, "cuda", torch.float16)
    # the stages before this one make its inputs
    work = torch.zeros((5, max(fused.plan.work_channels, 8), size, size), dtype=torch.float16, device="cuda")
    out = torch.zeros((5, fused.plan.out_channels, *fused.output_hw(size, size)), dtype=torch.float16,
                      device="cuda")
    work, out = (t.contiguous(memory_format=torch.channels_last) for t in (work, out))
    for stage in stages[:stage_index]:
        launch_stage(_stage_kernel, stage, x, work, out, (128, 128, 64, 8, 3, 1), "ieee")
    expected_out, expected_work = out.clone(), work.clone()
    stage = stages[stage_index]
    launch_stage(_stage_kernel, stage, x, expected_work, expected_out, (128, 128, 64, 8, 3, 1), "ieee")
    tma = tma_conv.plan_stage(stage, allow_split=True)
    assert tma is not None
    launch_tma_stage(_tma_stage_kernel, tma, x, work, out, config, "ieee")
    if tma.rest is not None:
        launch_stage(_stage_kernel, tma.rest, x, work, out, (128, 128, 64, 8, 3, 1), "ieee")
    torch.cuda.synchronize()
    for got, expected in ((out, expected_out), (work, expected_work)):
        assert torch.isfinite(got).all()
        # same products, another summation order: fp16 rounding of the stored values apart
        assert relative_l2(got, expected) < 2e-3


@torch.no_grad()
def test_tf32(monkeypatch):
    block, cin, size = make_block("InceptionB")
    x = block_input(4, cin, size)
    ref = block.double()(x.double())
    fused = fuse_block(block.float())
    fused.backend = "triton"
    monkeypatch.setenv(tma_conv.ENV_MODE, "split")
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert relative_l2(fused(x), ref) < 5e-3
        assert tma_launches(fused) > 0
        torch.backends.cudnn.allow_tf32 = False  # exact fp32: the stage kernel, to rounding
        assert relative_l2(fused(x), ref) < 1e-5
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def test_whole_model_and_cuda_graph(calibrated_model, monkeypatch):
    monkeypatch.setenv(tma_conv.ENV_MODE, "split")
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    plain = optimize(model, backend="triton", dtype=torch.float16)
    out = plain(x.half())
    assert sum(tma_launches(b) for b in plain.blocks) > 0
    two_x_rule(out, eager, ref)
    graphed = optimize(model, backend="triton", dtype=torch.float16, cuda_graph=True)
    for _ in range(2):  # capture, then replay on fresh inputs
        x = torch.randn(3, 3, 299, 299, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(graphed(x), plain(x), rtol=0, atol=0)


@torch.no_grad()
def test_triton_tma_backend_is_the_split_mode(calibrated_model, monkeypatch, fresh_backend_choices):
    """backend="triton-tma" runs what INCEPTION_FAST_TMA=split runs on the triton backend, and
    `auto` weighs it where INCEPTION_FAST_AUTO_EXPERIMENTS names it."""
    from inception_fast.backends import auto_backend

    monkeypatch.delenv(tma_conv.ENV_MODE, raising=False)
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    fused = optimize(model, backend="triton-tma", dtype=torch.float16, cuda_graph=False)
    out = fused(x.half())
    assert sum(tma_launches(b) for b in fused.blocks) > 0
    two_x_rule(out, eager, ref)
    monkeypatch.setenv(tma_conv.ENV_MODE, "split")
    split = optimize(model, backend="triton", dtype=torch.float16, cuda_graph=False)
    torch.testing.assert_close(split(x.half()), out, rtol=0, atol=0)
    monkeypatch.delenv(tma_conv.ENV_MODE)
    monkeypatch.setattr(auto_backend, "CANDIDATES", auto_backend.candidates("triton-tma"))
    monkeypatch.setattr(auto_backend, "_usable_on", {})
    auto = optimize(model, backend="auto", dtype=torch.float16, cuda_graph=False)
    two_x_rule(auto(x.half()), eager, ref)
    rows = [row for row in auto_backend.choice_table() if len(row["ms"]) > 1]  # blocks the kernels take
    # A candidate that raised while timed shows as inf: it must have been timed for real.
    assert rows and all(row["ms"].get("triton-tma", float("inf")) < float("inf") for row in rows)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@torch.no_grad()
def test_torch_compile_fullgraph(compiler, monkeypatch):
    """The TMA op under torch.compile (Inductor launches kernels that need descriptor scratch
    through its own launcher)."""
    monkeypatch.setenv(tma_conv.ENV_MODE, "split")
    block, cin, size = make_block("InceptionB")
    fused = fuse_block(block).half()
    fused.backend = "triton"
    x = block_input(2, cin, size, torch.float16)
    expected = fused(x)  # packs outside the trace
    assert tma_launches(fused) > 0
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)
    torch.testing.assert_close(compiled(x), expected, rtol=2e-3, atol=2e-3)
