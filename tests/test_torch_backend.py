"""The `torch` backend executes the block plans on folded weights: it must give the reference
block's output in every dtype, layout and shape, and the whole model's logits via optimize().

Tolerances (shared docs, BENCHMARKING.md): float64 to 1e-10 relative L2; in a lower dtype D the
fused result may be at most 2x as far from the float64 reference as eager PyTorch in D, plus a
small absolute slack. Outputs are NaN-poisoned before the backend writes them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inception_fast
from inception_fast import reference
from inception_fast.backends import cudnn_epilogues, torch_backend
from inception_fast.testing import random_images, randomize_batchnorm, relative_l2

# name -> (input channels, the block's size inside the 299x299 network)
BLOCKS = {
    "Mixed3a": (64, 147),
    "Mixed4a": (160, 73),
    "Mixed5a": (192, 71),
    "InceptionA": (384, 35),
    "ReductionA": (384, 35),
    "InceptionB": (1024, 17),
    "ReductionB": (1024, 17),
    "InceptionC": (1536, 8),
}
NAMES = list(BLOCKS)
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SLACK = {torch.float32: 1e-9, torch.float16: 1e-5, torch.bfloat16: 1e-4}


class _PoisonedTorch:
    """`torch` as the torch backend sees it under `nan_poison`: torch.empty fills floats with NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        out = torch.empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    """Every float tensor the backend allocates starts as NaN: a slice never written shows.
    Patched in the backend's module only: torch.empty itself stays what Dynamo knows it as."""
    monkeypatch.setattr(torch_backend, "torch", _PoisonedTorch())


def make_block(name, seed=0):
    """A reference block in float64 with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    block = getattr(reference, name)()
    return randomize_batchnorm(block).double().eval()


def block_input(name, batch, hw, dtype=torch.float64):
    return torch.randn(batch, BLOCKS[name][0], *hw, dtype=dtype)


def check_lowp(fused_out, eager_out, ref, dtype):
    """Fused in `dtype` no further from the float64 reference than 2x eager in `dtype`."""
    assert fused_out.dtype == dtype
    fused_err, eager_err = relative_l2(fused_out, ref), relative_l2(eager_out, ref)
    assert fused_err <= 2 * eager_err + SLACK[dtype], f"fused {fused_err:.3e} vs eager {eager_err:.3e}"


# --- per block -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch, hw", [(1, None), (3, (9, 11))], ids=["b1-native", "b3-9x11"])
def test_block_float64_and_float32(name, batch, hw):
    hw = hw or (BLOCKS[name][1],) * 2
    block = make_block(name)
    x = block_input(name, batch, hw)
    with torch.no_grad():
        ref = block(x)
        out = inception_fast.fuse_block(block)(x)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert relative_l2(out, ref) < 1e-10
    assert (ref > 0).float().mean() > 0.3  # the block is not dead: ReLU passes a good share

    block32 = copy.deepcopy(block).float()
    with torch.no_grad():
        eager = block32(x.float())
        fused = inception_fast.fuse_block(block32)(x.float())
    check_lowp(fused, eager, ref, torch.float32)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_block_half_precision_on_cpu(name, dtype):
    block = make_block(name)
    x = block_input(name, 2, (7, 9))
    with torch.no_grad():
        ref = block(x)
        eager = copy.deepcopy(block).to(dtype)(x.to(dtype))
        fused = inception_fast.fuse_block(block).to(dtype)(x.to(dtype))
    check_lowp(fused, eager, ref, dtype)


def _layouts(x):
    n, c, h, w = x.shape
    wide = torch.randn(n, c + 7, h, w + 3, dtype=x.dtype)
    wide[:, 3 : 3 + c, :, 1 : 1 + w] = x
    yield "nchw", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "channel-and-width view", wide[:, 3 : 3 + c, :, 1 : 1 + w]
    yield "transposed", x.transpose(2, 3).contiguous().transpose(2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_block_any_input_layout(name):
    block = make_block(name)
    fused = inception_fast.fuse_block(block)
    x = block_input(name, 2, (9, 11))
    with torch.no_grad():
        ref = block(x)
        for label, view in _layouts(x):
            assert torch.equal(view, x)
            out = fused(view)
            assert out.shape == ref.shape, label
            assert relative_l2(out, ref) < 1e-10, label


def test_no_concat_anywhere(fused64, monkeypatch):
    """Branches store into slices of one preallocated output; torch.cat is never called."""

    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat called")

    monkeypatch.setattr(torch, "cat", no_cat)
    monkeypatch.setattr(torch, "concat", no_cat)
    with torch.no_grad():
        assert fused64(torch.randn(2, 3, 83, 83, dtype=torch.float64)).shape == (2, 1000)


@pytest.mark.parametrize("name", NAMES)
def test_block_batch_zero_launches_nothing(name, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("the backend ran on an empty batch")

    monkeypatch.setattr(torch_backend, "run_block", no_launch)
    block = make_block(name)
    x = block_input(name, 0, (9, 11))
    out = inception_fast.fuse_block(block)(x)
    with torch.no_grad():
        assert out.shape == block(x).shape
    assert out.dtype == x.dtype


@pytest.mark.parametrize("conv", [(3, 32, 3, 2, 0), (32, 32, 3, 1, 0), (32, 64, 3, 1, 1)], ids=str)
def test_stem_conv(conv):
    cin, cout, kernel, stride, padding = conv
    torch.manual_seed(1)
    block = randomize_batchnorm(reference.ConvBnRelu(cin, cout, kernel, stride, padding)).double().eval()
    fused = inception_fast.fuse_block(block)
    assert isinstance(fused, inception_fast.FusedBlock) and len(fused.plan.ops) == 1
    x = torch.randn(3, cin, 13, 10, dtype=torch.float64)
    with torch.no_grad():
        assert relative_l2(fused(x), block(x)) < 1e-10


def test_fused_blocks_work_inside_another_model():
    torch.manual_seed(2)
    stem = nn.Conv2d(3, 384, 3, padding=1, dtype=torch.float64)
    block_a, block_ra = make_block("InceptionA", 3), make_block("ReductionA", 4)
    head = nn.Linear(1024, 7, dtype=torch.float64)

    def model(a, ra):
        return nn.Sequential(stem, nn.ReLU(), a, ra, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()

    ref_model = model(block_a, block_ra)
    fused_a = inception_fast.fuse_block(block_a)
    fused_model = model(fused_a, inception_fast.fuse_block(block_ra))
    assert fused_model[3].plan.name == "ReductionA"
    x = torch.randn(3, 3, 15, 13, dtype=torch.float64)
    with torch.no_grad():
        assert relative_l2(fused_model(x), ref_model(x)) < 1e-10


def test_fused_block_moves_between_dtypes():
    block = make_block("InceptionB")
    fused = inception_fast.fuse_block(block).float()
    x = block_input("InceptionB", 2, (5, 6))
    with torch.no_grad():
        ref = block(x)
        out = fused(x.float())
        eager = copy.deepcopy(block).float()(x.float())
    check_lowp(out, eager, ref, torch.float32)


def test_fuse_block_refuses_a_chain_of_blocks():
    chain = nn.Sequential(make_block("InceptionA"), make_block("InceptionA")).eval()
    with pytest.raises(inception_fast.UnsupportedModel, match=r"2 blocks in a row.*optimize"):
        inception_fast.fuse_block(chain)


def test_fuses_timm_blocks():
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    timm_model = timm.create_model("inception_v4", pretrained=False)
    for index in (4, 6, 10, 11, 18, 19):
        block = randomize_batchnorm(timm_model.features[index]).double().eval()
        fused = inception_fast.fuse_block(block)
        x = torch.randn(2, fused.plan.in_channels, 9, 11, dtype=torch.float64)
        with torch.no_grad():
            assert relative_l2(fused(x), block(x)) < 1e-10, type(block).__name__


# --- whole model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fused64(calibrated_model64):
    return inception_fast.optimize(calibrated_model64, backend="torch")


@pytest.mark.parametrize("batch, hw", [(1, (299, 299)), (3, (107, 107)), (2, (139, 171))], ids=str)
def test_model_float64(fused64, calibrated_model64, batch, hw):
    x = torch.randn(batch, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64(x)
        out = fused64(x)
    assert out.shape == (batch, 1000)
    assert relative_l2(out, ref) < 1e-10
    assert ref.std() > 0.1


@pytest.mark.parametrize("batch, size", [(1, 299), (3, 107)], ids=str)
def test_model_float32_within_twice_eager_error(calibrated_model, calibrated_model64, batch, size):
    fused = inception_fast.optimize(calibrated_model, backend="torch")
    x = random_images(batch, size, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64(x)
        eager = calibrated_model(x.float())
        out = fused(x.float())
    check_lowp(out, eager, ref, torch.float32)
    assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_model_half_precision_on_cpu(calibrated_model, calibrated_model64, dtype):
    fused = inception_fast.optimize(calibrated_model, backend="torch", dtype=dtype)
    x = random_images(2, 91, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64(x)
        eager = copy.deepcopy(calibrated_model).to(dtype)(x.to(dtype))
        out = fused(x.to(dtype))
    check_lowp(out, eager, ref, dtype)


def test_model_channels_last_and_view_inputs(fused64, calibrated_model64):
    x = torch.randn(2, 3, 83, 97, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64(x)
        for label, view in _layouts(x):
            assert relative_l2(fused64(view), ref) < 1e-10, label


def test_model_batch_zero(fused64, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("the backend ran on an empty batch")

    monkeypatch.setattr(torch_backend, "run_block", no_launch)
    out = fused64(torch.randn(0, 3, 299, 299, dtype=torch.float64))
    assert out.shape == (0, 1000) and out.dtype == torch.float64


def test_optimize_timm_model_gives_its_logits(calibrated_model64):
    timm = pytest.importorskip("timm")
    timm_model = timm.create_model("inception_v4", pretrained=False)
    timm_model.load_state_dict(calibrated_model64.state_dict())
    timm_model = timm_model.double().eval()
    fused = inception_fast.optimize(timm_model, backend="torch")
    x = torch.randn(3, 3, 107, 107, dtype=torch.float64)
    with torch.no_grad():
        assert relative_l2(fused(x), timm_model(x)) < 1e-10


def test_optimize_result_and_input_model_untouched(calibrated_model):
    before = {k: v.clone() for k, v in calibrated_model.state_dict().items()}
    fused = inception_fast.optimize(calibrated_model, dtype="bf16")
    assert isinstance(fused, inception_fast.FusedNetwork)
    assert not fused.training
    assert fused.backend == "torch"  # "auto" on a CPU
    assert fused.num_classes == 1000
    assert fused.default_cfg == inception_fast.DEFAULT_CFG
    assert all(t.dtype == torch.bfloat16 for t in fused.buffers())
    assert len(fused.blocks) == 24  # 22 feature blocks, the global pool, the classifier
    after = calibrated_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert calibrated_model.features[0].conv.weight.dtype == torch.float32


def test_forward_features_and_head(fused64, calibrated_model64):
    x = torch.randn(1, 3, 107, 107, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64.forward_features(x)
        features = fused64.forward_features(x)
        assert relative_l2(features, ref) < 1e-10
        assert relative_l2(fused64.forward_head(features), calibrated_model64.forward_head(ref)) < 1e-10


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_block_on_cuda(name, dtype):
    block = make_block(name)
    x = block_input(name, 3, (BLOCKS[name][1],) * 2)
    with torch.no_grad():
        ref = block(x)
        eager = copy.deepcopy(block).to("cuda", dtype)(x.to("cuda", dtype))
        fused = inception_fast.fuse_block(block.float().cuda()).to(dtype)
        out = fused(x.to("cuda", dtype))
    assert out.device.type == "cuda"
    check_lowp(out, eager, ref, dtype)
    # The GPU path hands activations on in NHWC without a layout copy.
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
def test_model_on_cuda(calibrated_model, calibrated_model64, dtype):
    fused = inception_fast.optimize(calibrated_model, backend="torch", dtype=dtype, device="cuda")
    x = random_images(5, 299, dtype=torch.float64)
    with torch.no_grad():
        ref = calibrated_model64(x)
        eager = copy.deepcopy(calibrated_model).to("cuda", dtype)(x.to("cuda", dtype))
        out = fused(x.to("cuda", dtype).contiguous(memory_format=torch.channels_last))
    check_lowp(out, eager, ref, dtype)


# --- cuDNN's fused epilogues (GPU only), their plumbing checked on the CPU -------------------------


@pytest.fixture(scope="module")
def fused_cases():
    """(label, fused float64 block, input size) for every kind of conv epilogue, built once."""
    from test_cuda_kernel_emulation import _family_block

    cases = [("v4 stem conv", inception_fast.fuse_block(
        randomize_batchnorm(reference.ConvBnRelu(32, 64, 3, 1, 1)).double().eval()), (11, 9))]
    cases += [(name, inception_fast.fuse_block(make_block(name)), (9, 11))
              for name in ("Mixed3a", "Mixed4a", "InceptionA", "ReductionB")]
    cases += [
        ("irv2 residual with ReLU", _family_block("inception_resnet_v2", "repeat.0"), (6, 5)),
        ("irv2 residual without ReLU", _family_block("inception_resnet_v2", "block8"), (4, 5)),
        ("googlenet inception3a", _family_block("googlenet", "inception3a"), (9, 7)),
    ]
    return cases


@pytest.fixture
def fused_epilogues(monkeypatch):
    """The fused path on the CPU: cuDNN's two fused ops emulated by their definitions; returns
    the calls made, as (op, output tensor)."""
    calls = []

    def conv_relu(x, w, b, stride, padding):
        y = torch.relu(F.conv2d(x, w, b, stride, padding))
        calls.append(("relu", y))
        return y

    def conv_add_relu(x, w, z, b, stride, padding):
        assert z.shape[1] == w.shape[0]
        y = torch.relu(F.conv2d(x, w, b, stride, padding) + z)
        calls.append(("add_relu", y))
        return y

    monkeypatch.setattr(cudnn_epilogues, "applies", lambda x: True)
    monkeypatch.setattr(cudnn_epilogues, "conv_relu", conv_relu)
    monkeypatch.setattr(cudnn_epilogues, "conv_add_relu", conv_add_relu)
    return calls


def test_fused_epilogues_compute_what_the_plain_ops_do(fused_epilogues, fused_cases):
    """Every block kind through the fused path (slices, stacked columns, residuals, the conv that
    is the whole output) equals the plain ops to rounding, with the fused ops doing the convs
    they can: all-ReLU convs, not the avg-pool rewrite's columns nor a residual without ReLU."""
    for label, block, hw in fused_cases:
        x = torch.randn(2, block.plan.in_channels, *hw, dtype=torch.float64)
        fusable = [op for op in block.plan.convs if cudnn_epilogues.fusable(op)]
        with torch.no_grad():
            fused_epilogues.clear()
            got = torch_backend.run_block(block, x)
            calls = list(fused_epilogues)
            with pytest.MonkeyPatch.context() as plain:
                plain.setattr(cudnn_epilogues, "applies", lambda x: False)
                want = torch_backend.run_block(block, x)
        assert not torch.isnan(got).any(), label
        assert relative_l2(got, want) < 1e-12, label
        assert len(calls) == len(fusable) > 0 or "without ReLU" in label, label
        residuals = [op for op in fusable if op.writes[0].residual]
        assert sum(kind == "add_relu" for kind, _ in calls) == len(residuals), label
        if cudnn_epilogues.whole_output_conv(block.plan) is not None and len(block.plan.ops) == 1:
            assert got is calls[0][1], f"{label}: the whole-output conv was copied"


def test_a_conv_cudnn_cannot_fuse_runs_on_the_plain_ops(fused_epilogues, monkeypatch):
    """A shape without a fused cuDNN kernel (a RuntimeError) falls back, once per block and conv."""
    tries = []

    def no_engine(*args):
        tries.append(1)
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(cudnn_epilogues, "conv_relu", no_engine)
    block = inception_fast.fuse_block(make_block("Mixed3a"))
    x = block_input("Mixed3a", 2, (9, 11))
    with torch.no_grad():
        ref = block(x)  # a fused block's forward: the backend's run_block
        again = block(x)
    fusable = [op for op in block.plan.convs if cudnn_epilogues.fusable(op)]
    assert len(tries) == len(fusable) > 0
    assert torch.equal(ref, again) and not torch.isnan(ref).any()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_epilogues_on_cuda(dtype, monkeypatch, fused_cases):
    """On a GPU the all-ReLU convs run as cuDNN's fused kernels (counted), every family block
    kind within twice the plain ops' error."""
    _check_fused_epilogues_on_cuda(dtype, monkeypatch, fused_cases)


@pytest.mark.cuda
@pytest.mark.parametrize("tf32", [False, True], ids=["exact", "tf32-allowed"])
def test_fp32_stays_off_the_fused_kernels(tf32, monkeypatch):
    """The fused kernels' fp32 is not F.conv2d's (TF32-sized errors where it was exact): fp32 runs
    the plain ops whatever the TF32 switch says."""
    def no_fused(*args):
        raise AssertionError("a fused cuDNN kernel ran in fp32")

    monkeypatch.setattr(cudnn_epilogues, "conv_relu", no_fused)
    monkeypatch.setattr(cudnn_epilogues, "conv_add_relu", no_fused)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    block = make_block("Mixed4a")
    x = block_input("Mixed4a", 2, (9, 11))
    with torch.no_grad():
        ref = block(x)
        out = inception_fast.fuse_block(block).to("cuda", torch.float32)(x.to("cuda", torch.float32))
    assert relative_l2(out.cpu(), ref) < (1e-2 if tf32 else 1e-5)


def _check_fused_epilogues_on_cuda(dtype, monkeypatch, fused_cases):
    calls = []
    for fn in ("conv_relu", "conv_add_relu"):
        real = getattr(cudnn_epilogues, fn)
        monkeypatch.setattr(cudnn_epilogues, fn, lambda *a, _f=real: calls.append(1) or _f(*a))
    for label, block, hw in fused_cases:
        x = torch.randn(3, block.plan.in_channels, *hw, dtype=torch.float64)
        calls.clear()
        with torch.no_grad():
            ref = torch_backend.run_block(block, x)
            fused = copy.deepcopy(block).to("cuda", dtype)
            out = fused(x.to("cuda", dtype))
            # The reference in `dtype`: the same plan on the plain ops (conv, bias, ReLU each
            # rounded to `dtype`, as eager runs them); the float64 run above is exact.
            with pytest.MonkeyPatch.context() as plain:
                plain.setattr(cudnn_epilogues, "applies", lambda x: False)
                eager = fused(x.to("cuda", dtype))
        fusable = [op for op in block.plan.convs if cudnn_epilogues.fusable(op)]
        assert len(calls) == len(fusable), label
        assert out.is_contiguous(memory_format=torch.channels_last), label
        check_lowp(out.cpu(), eager.cpu(), ref, dtype)
