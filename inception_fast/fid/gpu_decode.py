"""JPEG decoding on the GPU (nvJPEG through torchvision), a batch of files per call.

Opt-in (`gpu_decode=True`, `--gpu-decode`): nvJPEG and libjpeg (PIL) are both valid JPEG
decoders but not bit-identical (IDCT rounding and chroma upsampling differ by a few levels per
pixel), so features, and FID values, move slightly; see benchmarks/fid/ for the measured
difference. A file nvJPEG refuses is decoded with PIL instead, one that PIL refuses too is
reported as unreadable.
"""

from __future__ import annotations

import io

import torch

from .images import decode_rgb
from .loader import DECODE_ERRORS


def _decode_jpeg():
    # torchvision 0.29 deprecates its image decoders in favour of TorchCodec (a DeprecationWarning,
    # hidden by default); the CUDA decoder still works and nothing else here needs TorchCodec.
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data, device):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


def gpu_decode_available(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"GPU decoding needs a CUDA device, got {device}"
    try:
        _decode_jpeg()
    except ImportError as err:
        return False, f"torchvision's decode_jpeg is not importable: {err}"
    return True, "nvJPEG through torchvision.io.decode_jpeg"


def decode_jpegs(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """[3, H, W] uint8 images on `device`, one per encoded file, or the reason it failed."""
    decode = _decode_jpeg()
    try:
        return list(decode(jpegs, device))
    except RuntimeError:
        pass  # one bad file fails the whole batched call: retry them one at a time
    results: list[torch.Tensor | str] = []
    for data in jpegs:
        try:
            results.append(decode(data, device))
        except RuntimeError:
            try:
                pixels = decode_rgb(io.BytesIO(data.numpy().tobytes()))
                results.append(torch.from_numpy(pixels.copy()).to(device).permute(2, 0, 1))
            except DECODE_ERRORS as err:
                results.append(f"{type(err).__name__}: {err}")
    return results
