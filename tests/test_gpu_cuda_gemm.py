"""The backends that put 1x1 convs on the CUTLASS GEMM op (`cuda-gemm`: the rest on the CUDA
stage kernel; `triton-gemm`: the rest on the Triton stage kernel) on a Hopper GPU: every
distinct block of Inception-v4, Inception-v3, Inception-ResNet-v2 and GoogLeNet in fp16 and
bf16 (`triton-gemm` also in fp32 on TF32, and in exact fp32 without the ops) at an odd batch
and input size, within 2x the error of the same block on PyTorch ops in that dtype
(NaN-poisoned buffers: a channel the split leaves unwritten fails); the whole model plain,
under a CUDA graph and under torch.compile; `auto` weighing it where
INCEPTION_FAST_AUTO_EXPERIMENTS names it. Each checks that the GEMM op really ran. Skipped off
Hopper and without the CUTLASS headers (the op is then not compiled in); with both, the
backends must be usable."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from gpu_blocks import LOW_PRECISION, two_x_rule

from inception_fast import extension, optimize
from inception_fast.backends import EXPERIMENTAL, backend_status, gemm_routing
from inception_fast.modules import FusedBlock
from inception_fast.testing import calibrated_model, relative_l2

pytestmark = pytest.mark.cuda
# network -> (constructor kwargs, odd batch, odd input size)
NETWORKS = {
    "inception_v4": ({}, 3, 235),
    "inception_v3": ({}, 3, 299),
    "inception_resnet_v2": ({}, 3, 235),
    "googlenet": ({"transform_input": True}, 3, 193),
}


@pytest.fixture(params=["cuda-gemm", "triton-gemm"])
def backend(request):
    """The backend under test, usable wherever the GEMM op can be."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS GEMM kernels are built for sm_90a (Hopper) only")
    if extension.cutlass_include_dir() is None:
        pytest.skip("no CUTLASS headers, so the GEMM op is not compiled in (pip install nvidia-cutlass)")
    ok, reason = backend_status(request.param, "cuda")
    if not ok:
        pytest.fail(f"the {request.param} backend must work on Hopper with the CUTLASS headers: {reason}")
    return request.param


@pytest.fixture(autouse=True)
def heuristic_tiles(monkeypatch):
    monkeypatch.setenv("INCEPTION_FAST_AUTOTUNE", "0")


@pytest.fixture
def gemm_calls(monkeypatch, backend):
    """Counts the CUTLASS ops' calls, the GEMM's and the k x k conv's (triton-gemm's k x k convs;
    the backends look the ops up on every launch). Taken after `backend`, which loads the
    extension; each op's one-time probe call is made here, so it is not counted as a launch."""
    gemm_routing.op_status("cuda")
    gemm_routing.conv_op_status("cuda")
    calls = []
    for name in ("cuda_gemm_conv1x1", "cuda_conv_fprop"):
        real = getattr(torch.ops.inception_fast, name).default

        def counted(*args, real=real, name=name):
            calls.append((name, args[1].shape))
            return real(*args)

        monkeypatch.setattr(torch.ops.inception_fast, name, types.SimpleNamespace(default=counted))
    return calls


@pytest.fixture(scope="module")
def source_models():
    found = {}

    def get(name):
        if name not in found:
            kwargs, _, _ = NETWORKS[name]
            found[name] = calibrated_model(name, seed=0, **kwargs).cuda()
        return found[name]

    return get


def launches_planned(block: FusedBlock, backend: str) -> int:
    return sum(len(stage.launches) for key, stages in block.backend_cache.items() if key[0] == backend
               for stage in stages)


def distinct_blocks(model, batch: int, size: int) -> list[tuple[FusedBlock, torch.Tensor]]:
    """Each distinct block of the fp32 fused network with the input it gets in the network."""
    fused = optimize(model, backend="torch")
    x = torch.randn(batch, 3, size, size, device="cuda")
    found = {}
    for step in fused.steps:
        if isinstance(step, FusedBlock):
            found.setdefault(step.plan, (step, x))
            x = step.run(x)
        else:
            x = step(x)
    return list(found.values())


@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.float32], ids=["fp16", "bf16", "tf32"])
@pytest.mark.parametrize("name", list(NETWORKS))
@torch.no_grad()
def test_every_distinct_block(source_models, gemm_calls, backend, name, dtype):
    if dtype == torch.float32 and backend != "triton-gemm":
        pytest.skip(f"{backend} runs fp32 on PyTorch ops")
    _, batch, size = NETWORKS[name]
    taken = 0
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # an fp32 reference without TF32
        blocks = distinct_blocks(source_models(name), batch, size)
        references = [block(x) for block, x in blocks]
    for (block, x), ref in zip(blocks, references):
        low = copy.deepcopy(block).to(dtype)
        eager = low(x.to(dtype))  # the torch backend in this dtype: cuDNN on the folded weights
        low.backend = backend
        before = len(gemm_calls)
        out = low(x.to(dtype))
        assert len(gemm_calls) - before == launches_planned(low, backend), block.plan.label
        taken += launches_planned(low, backend)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(out).all(), f"{block.plan.label}: a channel never written, or a NaN"
        two_x_rule(out, eager, ref)
    assert taken > 0, f"no problem of {name} ran on the GEMM op"


@torch.no_grad()
def test_exact_fp32_keeps_off_the_tf32_ops(source_models, gemm_calls, backend):
    """With cudnn.allow_tf32 off, triton-gemm runs fp32 whole on the stage kernel's exact dots."""
    if backend != "triton-gemm":
        pytest.skip(f"{backend} runs fp32 on PyTorch ops")
    _, batch, size = NETWORKS["inception_v4"]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for block, x in distinct_blocks(source_models("inception_v4"), batch, size)[:8]:
            ref = block(x)
            fused = copy.deepcopy(block)
            fused.backend = "triton-gemm"
            before = len(gemm_calls)
            assert relative_l2(fused(x), ref) < 1e-5, block.plan.label
            assert len(gemm_calls) == before, f"{block.plan.label}: exact fp32 ran on a TF32 op"


@torch.no_grad()
def test_whole_model_plain_and_under_a_cuda_graph(calibrated_model, gemm_calls, backend):
    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    plain = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=False)
    out = plain(x.half())
    assert len(gemm_calls) > 0
    two_x_rule(out, eager, ref)
    graphed = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=True)
    for batch in (3, 1, 3):  # capture, a new shape captures anew, then replay on fresh inputs
        x = torch.randn(batch, 3, 299, 299, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(graphed(x), plain(x), rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3])
def test_op_groups_give_the_same_bits(calibrated_model, monkeypatch, backend, batch):
    """INCEPTION_FAST_OP_GROUPS=1, a call without a CUDA graph: a stage's op launches that run one
    after another (cuda-gemm's every stage, triton-gemm's small ones) go in one call of
    cuda_op_launches, with the same bits as a call of its op per launch."""
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=False)
    x = torch.randn(batch, 3, 299, 299, device="cuda", dtype=torch.float16)
    monkeypatch.setenv(gemm_routing.ENV_OP_GROUPS, "0")
    expected = fused(x)
    grouped = []
    real = torch.ops.inception_fast.cuda_op_launches.default

    def counted(*args):
        grouped.append(len(args[3]))
        return real(*args)

    monkeypatch.setattr(torch.ops.inception_fast, "cuda_op_launches", types.SimpleNamespace(default=counted))
    monkeypatch.setenv(gemm_routing.ENV_OP_GROUPS, "1")
    torch.testing.assert_close(fused(x), expected, rtol=0, atol=0)
    assert grouped and min(grouped) > 1, grouped


@torch.no_grad()
def test_torch_compile_fullgraph(calibrated_model, backend):
    model = copy.deepcopy(calibrated_model).cuda()
    fused = optimize(model, backend=backend, dtype=torch.float16, cuda_graph=False)
    x = torch.randn(2, 3, 299, 299, device="cuda", dtype=torch.float16)
    expected = fused(x)  # splits the stages outside the trace
    compiled = torch.compile(fused, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=2e-3, atol=2e-3)


@torch.no_grad()
def test_auto_weighs_it(calibrated_model, monkeypatch, fresh_backend_choices, backend):
    from inception_fast.backends import auto_backend

    model = copy.deepcopy(calibrated_model).cuda()
    x = torch.randn(3, 3, 299, 299, device="cuda")
    ref = model(x)
    eager = copy.deepcopy(model).half()(x.half())
    named = backend if backend in EXPERIMENTAL else None  # cuda-gemm where named; triton-gemm always
    monkeypatch.setattr(auto_backend, "CANDIDATES", auto_backend.candidates(named))
    monkeypatch.setattr(auto_backend, "_usable_on", {})
    auto = optimize(model, backend="auto", dtype=torch.float16, cuda_graph=False)
    two_x_rule(auto(x.half()), eager, ref)
    rows = [row for row in auto_backend.choice_table() if len(row["ms"]) > 1]  # blocks the kernels take
    # A candidate that raised while timed shows as inf: it must have been timed for real.
    assert rows and all(row["ms"].get(backend, float("inf")) < float("inf") for row in rows)
