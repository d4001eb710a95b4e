"""The feature model: [N, 3, H, W] images in [0, 1] -> [N, dims] FID features.

It wraps the FID network, either as it is (`backend="eager"`: the reference module, plain
PyTorch) or fused by `inception_fast.optimize()` (every other backend), in the precision asked
for. As pytorch-fid does, a block output that is not already 1x1 is averaged to 1x1.

Precisions:
    fp32  the default: what pytorch-fid computes (on a GPU with TF32 convolutions, which is
          PyTorch's default for cuDNN; set torch.backends.cudnn.allow_tf32 = False for full fp32)
    fp16, bf16  opt-in, faster; the network runs in that dtype, the features are returned as
          float32 and the statistics are float64 as always
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import from_pytorch_fid, load_fid_inception
from .dims import block_index
from .network import FIDInceptionV3

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FUSED_BACKENDS = ("auto", "torch", "triton", "cuda")
BACKENDS = (*FUSED_BACKENDS, "eager")


class FIDFeatures(nn.Module):
    """images in [0, 1] -> [N, dims] float32 features."""

    def __init__(self, network: nn.Module, dims: int, output_position: int, dtype: torch.dtype,
                 backend: str, device: torch.device) -> None:
        super().__init__()
        self.network = network
        self.dims = dims
        self.output_position = output_position  # which of the network's outputs is `dims`
        self.dtype = dtype
        self.backend = backend
        self.device = device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [N, 3, H, W] RGB images in [0, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected floating-point images in [0, 1], got {images.dtype} "
                            "(divide uint8 by 255)")
        out = self.network(images.to(self.device, self.dtype))[self.output_position].float()
        if out.shape[2] != 1 or out.shape[3] != 1:
            out = F.adaptive_avg_pool2d(out, output_size=(1, 1))
        return out.flatten(1)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, backend={self.backend}, dtype={self.dtype}, device={self.device}"


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here; use device='cpu'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _reference(weights, model, dims: int) -> FIDInceptionV3:
    if model is None:
        return load_fid_inception(weights, dims=dims)
    if weights is not None:
        raise ValueError("give either weights (a checkpoint file) or model (a network), not both")
    if isinstance(model, FIDInceptionV3):
        if block_index(dims) not in model.output_blocks:
            raise ValueError(f"dims={dims} is block {block_index(dims)}, not among this network's "
                             f"output_blocks {model.output_blocks}")
        return copy.deepcopy(model).eval()  # moved and cast next: leave the caller's as it is
    # pytorch-fid's own InceptionV3 (same module tree and keys).
    return from_pytorch_fid(model, dims)


def build_feature_model(
    weights: str | os.PathLike | None = None,
    *,
    model: nn.Module | None = None,
    dims: int = 2048,
    device=None,
    precision: str = "fp32",
    backend: str = "auto",
) -> FIDFeatures:
    """The FID feature model.

    Args:
        weights: pytorch-fid's checkpoint file (`pt_inception-2015-12-05-6726825d.pth`); default
            pytorch-fid's own download, where present.
        model: instead of `weights`, a network: our `FIDInceptionV3` or pytorch-fid's
            `InceptionV3` (its weights are used).
        dims: 64, 192, 768 or 2048, pytorch-fid's feature sizes.
        device: default CUDA where available, else the CPU.
        precision: "fp32" (default), "fp16" or "bf16" (opt-in; see the module docstring).
        backend: "auto", "torch", "triton" or "cuda" fuse the network with
            `inception_fast.optimize()`; "eager" runs the reference module as it is.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    block_index(dims)  # an unsupported dims fails before anything is loaded
    device = resolve_device(device)
    dtype = PRECISIONS[precision]
    reference = _reference(weights, model, dims)
    position = reference.output_blocks.index(block_index(dims))
    reference = reference.to(device).eval()
    if backend == "eager":
        network = reference.to(dtype)
    else:
        network = _fuse(reference, backend, dtype, device)
    return FIDFeatures(network, dims, position, dtype, backend, device).eval()


def _fuse(reference: FIDInceptionV3, backend: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from ..optimize import optimize

    try:
        return optimize(reference, backend=backend, dtype=dtype, device=device)
    except TypeError as err:
        # optimize() refuses networks it has no plan for with a TypeError.
        raise TypeError(
            f"inception_fast.optimize() cannot fuse the FID Inception-v3 here ({err}). Run it unfused with "
            f"backend='eager' (--backend eager): the same network in plain PyTorch"
        ) from err
