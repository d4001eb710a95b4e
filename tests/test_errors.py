"""Bad input gets a clear error naming what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inception_fast
from inception_fast.testing import randomize_batchnorm


@pytest.fixture(scope="module")
def fused_model(calibrated_model):
    return inception_fast.optimize(calibrated_model, backend="torch")


@pytest.fixture
def fused_block():
    block = randomize_batchnorm(inception_fast.reference.InceptionA()).eval()
    return inception_fast.fuse_block(block)


def _block_and_model(fused_block, fused_model):
    return [(fused_block, "FusedBlock", 384), (fused_model, "FusedNetwork", 3)]


@pytest.mark.parametrize("shape", [(384, 9, 9), (1, 1, 384, 9, 9), (384,)], ids=["3d", "5d", "1d"])
def test_wrong_number_of_dimensions(fused_block, fused_model, shape):
    for module, name, channels in _block_and_model(fused_block, fused_model):
        x = torch.randn(*[channels if s == 384 else s for s in shape])
        with pytest.raises(ValueError) as info:
            module(x)
        message = str(info.value)
        assert name in message and "4-D" in message and f"got {x.dim()}-D" in message
        assert str(tuple(x.shape)) in message


def test_wrong_number_of_channels(fused_block, fused_model):
    with pytest.raises(ValueError, match=r"expected 384 input channels .* got 320"):
        fused_block(torch.randn(2, 320, 9, 9))
    with pytest.raises(ValueError, match=r"expected 3 input channels .* got 1 in shape \(2, 1, 99, 99\)"):
        fused_model(torch.randn(2, 1, 99, 99))
    # An NHWC tensor passed without permuting is a channel error, not a crash deep inside.
    with pytest.raises(ValueError, match="expected 3 input channels"):
        fused_model(torch.randn(1, 99, 99, 3))


@pytest.mark.parametrize("hw", [(74, 74), (299, 60), (8, 8)], ids=str)
def test_spatial_size_too_small_for_the_network(fused_model, hw):
    with pytest.raises(ValueError) as info:
        fused_model(torch.randn(1, 3, *hw))
    message = str(info.value)
    assert f"{hw[0]}x{hw[1]} is too small" in message
    assert "at least 75x75" in message


def test_spatial_size_too_small_for_a_block():
    block = inception_fast.fuse_block(randomize_batchnorm(inception_fast.reference.ReductionB()).eval())
    with pytest.raises(ValueError, match=r"ReductionB: input of 2x5 is too small for its 3x3 window"):
        block(torch.randn(1, 1024, 2, 5))
    # The check comes before the empty-batch shortcut.
    with pytest.raises(ValueError, match="too small"):
        block(torch.randn(0, 1024, 2, 5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_dtype_unlike_the_weights(fused_block, fused_model, dtype):
    for module, name, channels in _block_and_model(fused_block, fused_model):
        with pytest.raises(TypeError) as info:
            module(torch.randn(1, channels, 99, 99, dtype=dtype))
        message = str(info.value)
        assert name in message and str(dtype) in message and "torch.float32" in message


def test_integer_images_are_a_dtype_error(fused_model):
    with pytest.raises(TypeError, match=r"torch\.uint8 does not match the module's torch\.float32"):
        fused_model(torch.randint(0, 255, (1, 3, 99, 99), dtype=torch.uint8))


def test_device_unlike_the_weights(fused_block, fused_model):
    # A meta tensor stands in for "another device" on a machine without a GPU.
    for module, name, channels in _block_and_model(fused_block, fused_model):
        with pytest.raises(ValueError) as info:
            module(torch.empty(1, channels, 99, 99, device="meta"))
        message = str(info.value)
        assert name in message and "meta" in message and "cpu" in message


@pytest.mark.cuda
def test_cuda_input_to_cpu_weights(fused_model):
    with pytest.raises(ValueError, match=r"input is on cuda:0 but the module's weights are on cpu"):
        fused_model(torch.randn(1, 3, 99, 99, device="cuda"))


def test_train_mode_is_refused(fused_block, fused_model):
    for module, name, channels in _block_and_model(fused_block, fused_model):
        module.train()
        try:
            with pytest.raises(RuntimeError, match=rf"{name} is inference-only .*\.eval\(\)"):
                module(torch.randn(1, channels, 99, 99))
        finally:
            module.eval()
    # Put in train mode by an outer model, a fused block refuses too.
    outer = nn.Sequential(nn.Identity(), fused_block).train()
    with pytest.raises(RuntimeError, match="inference-only"):
        outer(torch.randn(1, 384, 9, 9))


def test_input_that_requires_grad_is_refused(fused_block, fused_model):
    for module, name, channels in _block_and_model(fused_block, fused_model):
        x = torch.randn(1, channels, 99, 99, requires_grad=True)
        with pytest.raises(RuntimeError, match=rf"{name} is inference-only .*requires grad"):
            module(x)
        # Without autograd recording, the same tensor is fine.
        with torch.no_grad():
            assert module(x).shape[0] == 1
        with torch.inference_mode():
            assert module(x.detach()).shape[0] == 1


def test_non_tensor_input(fused_model):
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor input, got list"):
        fused_model([[1.0, 2.0]])


def test_batch_zero_returns_an_empty_result(fused_block, fused_model):
    assert fused_model(torch.randn(0, 3, 99, 99)).shape == (0, 1000)
    assert fused_block(torch.randn(0, 384, 9, 11)).shape == (0, 384, 9, 11)


# --- optimize() ------------------------------------------------------------------------------------


def test_optimize_refuses_a_model_in_train_mode(calibrated_model):
    calibrated_model.train()
    try:
        with pytest.raises(RuntimeError, match=r"eval mode.*model\.eval\(\)"):
            inception_fast.optimize(calibrated_model)
    finally:
        calibrated_model.eval()


def test_optimize_refuses_layers_without_a_kernel_naming_them():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)).eval()
    with pytest.raises(inception_fast.UnsupportedModel, match=r"^1: a GroupNorm layer is not supported"):
        inception_fast.optimize(model)
    with pytest.raises(TypeError, match=r"takes a torch\.nn\.Module, got function"):
        inception_fast.optimize(lambda x: x)


def test_optimize_refuses_unknown_backend_and_dtype(calibrated_model):
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt'; choose one of torch, triton, cuda"):
        inception_fast.optimize(calibrated_model, backend="tensorrt")
    with pytest.raises(ValueError, match=r"unsupported dtype 'int8'"):
        inception_fast.optimize(calibrated_model, dtype="int8")


def test_optimize_refuses_cuda_graphs_without_a_gpu_backend(calibrated_model):
    with pytest.raises(ValueError, match=r"cuda_graph=True needs a GPU backend .* got 'torch'"):
        inception_fast.optimize(calibrated_model, backend="torch", cuda_graph=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_optimize_refuses_a_gpu_backend_on_cpu(calibrated_model):
    with pytest.raises(RuntimeError, match=r"backend 'triton' is not usable on cpu"):
        inception_fast.optimize(calibrated_model, backend="triton")


def test_set_backend_refuses_unknown_name(fused_model):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fused_model.set_backend("fast")


def test_optimize_refuses_a_dtype_that_is_not_floating_point(calibrated_model):
    """Before: a raw error from deep inside folding."""
    for dtype in (torch.int32, torch.uint8, torch.bool):
        with pytest.raises(ValueError, match=rf"optimize\(dtype={dtype}\): the fused model computes in"):
            inception_fast.optimize(calibrated_model, dtype=dtype)


@pytest.mark.parametrize("device, message", [
    ("gpu", r"optimize\(device='gpu'\): not a device; use 'cpu', 'cuda' or 'cuda:N'"),
    ("meta", r"optimize\(device='meta'\): the fused model runs on 'cpu' or 'cuda' devices"),
])
def test_optimize_refuses_other_devices(calibrated_model, device, message):
    with pytest.raises(ValueError, match=message):
        inception_fast.optimize(calibrated_model, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
def test_optimize_on_cuda_without_a_gpu_says_so(calibrated_model):
    """Before: "Found no NVIDIA driver on your system" from the first tensor moved."""
    with pytest.raises(RuntimeError) as info:
        inception_fast.optimize(calibrated_model, device="cuda")
    message = str(info.value)
    assert message.startswith("optimize(device='cuda'): ") and "device='cpu'" in message
    assert "no CUDA GPU is visible" in message or "CPU-only build" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
def test_moving_a_fused_module_to_cuda_without_a_gpu_says_so(fused_block, fused_model):
    expected = r"a fused module cannot move to a CUDA device: (no CUDA GPU is visible|.* CPU-only build)"
    for move in (lambda m: m.cuda(), lambda m: m.to("cuda"), lambda m: nn.Sequential(m).cuda()):
        for module in (fused_block, fused_model):
            with pytest.raises(RuntimeError, match=expected):
                move(module)
    assert fused_model(torch.randn(1, 3, 75, 75)).shape == (1, 1000)  # still usable on the CPU


@pytest.mark.cuda
def test_optimize_names_a_missing_gpu_index(calibrated_model):
    index = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"this machine has {index} CUDA device\(s\)"):
        inception_fast.optimize(calibrated_model, device=f"cuda:{index}")


def test_torch_jit_script_is_refused_pointing_at_compile_and_export(fused_block, fused_model):
    for module in (fused_block, fused_model):
        with pytest.raises(TypeError, match=r"do not support torch\.jit\.script; use torch\.compile, or "
                                            r"torch\.export"):
            torch.jit.script(module)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_triton_tma_backend_says_why_it_is_unusable_without_a_gpu():
    from inception_fast.backends import backend_status

    usable, reason = backend_status("triton-tma", "cpu")
    assert not usable and reason
