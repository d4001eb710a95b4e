"""The feature model: backends, precisions and its input checks (CPU), and its GPU paths (cuda)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from fid_helpers import checkpoint_path, image_folders, relative_l2

from inception_fast.fid import build_feature_model, compute_features, load_fid_inception
from inception_fast.fid.features import _fuse


def _fused_or_skip(reference, backend: str, dtype: torch.dtype, device: torch.device):
    """The fused FID network (optimize() fuses it: a refusal is a failure, not a skip)."""
    return _fuse(reference, backend, dtype, device)


def test_the_torch_backend_equals_the_reference_in_float64():
    reference = load_fid_inception(checkpoint_path(), output_blocks=[0, 1, 2, 3]).double()
    fused = _fused_or_skip(reference, "torch", torch.float64, torch.device("cpu"))
    images = torch.rand(2, 3, 41, 67, dtype=torch.float64)
    with torch.no_grad():
        expected, outputs = reference(images), fused(images)
    assert len(outputs) == len(expected) == 4
    for got, want in zip(outputs, expected):
        assert relative_l2(got, want) < 1e-10


def test_an_unfusable_network_is_an_error_that_names_the_eager_backend(monkeypatch):
    def refuse(model, **_):
        raise TypeError(f"optimize() takes Inception-v4, got {type(model).__name__}")

    # The module, not the function the package exports under the same name.
    monkeypatch.setattr(importlib.import_module("inception_fast.optimize"), "optimize", refuse)
    with pytest.raises(TypeError, match=r"cannot fuse the FID Inception-v3.*backend='eager'"):
        build_feature_model(checkpoint_path(), dims=64, device="cpu", backend="torch")


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ValueError, match="precision"):
        build_feature_model(checkpoint_path(), dims=64, device="cpu", precision="fp8", backend="eager")
    with pytest.raises(ValueError, match="backend"):
        build_feature_model(checkpoint_path(), dims=64, device="cpu", backend="tensorrt")
    model = build_feature_model(checkpoint_path(), dims=64, device="cpu", backend="eager")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="divide uint8 by 255"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="gpu_decode"):
        compute_features(image_folders(24)[0], model=model, dims=64, gpu_decode=True)


def test_bf16_features_stay_close_to_fp32_on_the_cpu():
    images = torch.rand(2, 3, 50, 50)
    fp32 = build_feature_model(checkpoint_path(), dims=192, device="cpu", backend="eager")(images)
    bf16 = build_feature_model(checkpoint_path(), dims=192, device="cpu", precision="bf16", backend="eager")
    features = bf16(images)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert 0 < relative_l2(features, fp32) < 5e-2


def test_the_callers_network_is_left_as_it_was():
    network = load_fid_inception(checkpoint_path(), dims=64)
    build_feature_model(model=network, dims=64, device="cpu", precision="bf16", backend="eager")
    assert all(p.dtype == torch.float32 for p in network.parameters())


# --- GPU ---------------------------------------------------------------------------------------


@pytest.fixture
def full_fp32():
    """TF32 off for the duration of a test that compares fp32 results closely."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.cuda
@pytest.mark.parametrize("dims", [64, 2048])
def test_gpu_pipeline_matches_the_cpu_reference(dims, full_fp32):
    folder = image_folders(24)[0]
    cpu = compute_features(folder, checkpoint_path(), dims=dims, device="cpu", backend="eager", num_workers=0)
    gpu = compute_features(folder, checkpoint_path(), dims=dims, device="cuda", backend="eager",
                           num_workers=2, batch_size=7)
    assert relative_l2(gpu, cpu) <= 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "triton"])  # the cuda backend is fp16/bf16 only
def test_fused_fp32_features_match_eager(backend, full_fp32):
    reference = load_fid_inception(checkpoint_path(), output_blocks=[3]).cuda()
    fused = _fused_or_skip(reference, backend, torch.float32, torch.device("cuda"))
    images = torch.rand(5, 3, 299, 299, device="cuda")
    with torch.no_grad():
        assert relative_l2(fused(images)[0], reference(images)[0]) <= 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_is_at_most_twice_as_far_from_float64_as_eager(precision):
    """The project's rule for fused low precision, on the features."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    reference = load_fid_inception(checkpoint_path(), output_blocks=[3]).cuda()
    images = torch.rand(8, 3, 299, 299, device="cuda")
    with torch.no_grad():
        exact = reference.double()(images.double())[0].float()
        eager = load_fid_inception(checkpoint_path(), output_blocks=[3]).cuda().to(dtype)(images.to(dtype))[0]
        fused = _fused_or_skip(load_fid_inception(checkpoint_path(), output_blocks=[3]).cuda(), "auto", dtype,
                               torch.device("cuda"))(images.to(dtype))[0]
    eager_error, fused_error = relative_l2(eager.float(), exact), relative_l2(fused.float(), exact)
    assert torch.isfinite(fused.float()).all()
    assert fused_error <= 2 * eager_error + 1e-4, (fused_error, eager_error)


@pytest.mark.cuda
def test_gpu_jpeg_decoding_stays_close_to_pil(tmp_path):
    from inception_fast.fid.gpu_decode import decode_jpegs
    from inception_fast.fid.images import decode_rgb, read_bytes
    from inception_fast.fid.testing import write_image_folder

    files = write_image_folder(tmp_path, 6, (96, 128), seed=5, suffix=".jpg")
    decoded = decode_jpegs([read_bytes(f) for f in files] + [torch.tensor([1, 2, 3], dtype=torch.uint8)],
                           torch.device("cuda"))
    assert isinstance(decoded[-1], str)  # not a JPEG: reported, not raised
    for path, image in zip(files, decoded):
        pil = torch.from_numpy(decode_rgb(path)).permute(2, 0, 1).cuda()
        difference = (image.int() - pil.int()).abs()
        assert image.shape == pil.shape
        # Different decoders (IDCT rounding, chroma upsampling at sharp colour edges; nvJPEG's
        # differ between cards, up to 87 levels at an edge pixel on an H100): the same picture,
        # PSNR above 30 dB; the features below are the check that matters.
        psnr = 10 * torch.log10(255**2 / difference.float().pow(2).mean())
        assert psnr > 30, (psnr, difference.max())
    model = build_feature_model(checkpoint_path(), dims=2048, device="cuda", backend="eager")
    by_pil = compute_features(tmp_path, model=model, dims=2048, num_workers=0)
    by_gpu = compute_features(tmp_path, model=model, dims=2048, num_workers=0, gpu_decode=True)
    assert np.isfinite(by_gpu).all() and relative_l2(by_gpu, by_pil) < 2e-2
