"""`optimize(model)`: any model of the Inception family in, its fused form out."""

from __future__ import annotations

import torch
from torch import nn

from . import compile_ahead
from .architectures import default_cfg
from .backends import resolve_backend
from .checks import check_target
from .compiler import compile_model
from .modules import FusedNetwork

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
    "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64,
}


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(set(_DTYPES))}")


@torch.no_grad()
def optimize(
    model: nn.Module,
    backend: str = "auto",
    dtype=None,
    device=None,
    cuda_graph: bool | str = "auto",
    cuda_graph_max_batch: int = 64,
) -> FusedNetwork:
    """Fold and fuse a model for inference.

    The model's computation is read from the model itself (a torch.fx trace): its convs,
    BatchNorms, pools (module or functional), concatenations, residual adds and activations,
    with every attribute that changes the result. Tested on timm's ``inception_v4``,
    ``inception_v3`` and ``inception_resnet_v2``, torchvision's ``googlenet`` and
    ``inception_v3``, pytorch-fid's ``InceptionV3`` and ``inception_fast.inception_v4``; any
    model built from the same layers works, and anything the kernels cannot compute exactly
    is refused with an error naming the layer.

    The result holds a snapshot of the weights, folded now: editing or reloading `model`
    later changes nothing until ``fused.refresh(model)``.

    Args:
        model: the source model, in eval mode.
        backend: ``"auto"`` (on a GPU, per block and batch bucket the fastest of the Triton
            kernels, the CUDA extension and PyTorch's cuDNN path, timed once and cached;
            PyTorch ops on the CPU), ``"torch"``, ``"triton"`` or ``"cuda"``.
        dtype: weights and activations dtype of the result (default: the model's).
        device: where the result lives (default: the model's device).
        cuda_graph: replay the whole forward as one CUDA graph, captured per input shape (the
            first call at a shape runs it twice, then captures), for batches up to
            ``cuda_graph_max_batch``: launch-bound small batches gain most. ``"auto"`` (the
            default): on for the GPU backends, off for ``"torch"`` and on the CPU. Calls under
            ``torch.compile`` or inside a CUDA graph capture of your own run the plain launches.
            Outputs are fresh tensors each call.

    Returns:
        A ``FusedNetwork`` with the model's call signature and outputs (and timm's
        ``forward_features`` / ``forward_head`` where the model ends in global average pooling).
    """
    check_target(device, dtype)
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() takes a torch.nn.Module, got {type(model).__name__}")
    param = next(iter(model.parameters()), None)
    dtype = parse_dtype(dtype) if dtype is not None else (param.dtype if param is not None else torch.float32)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                               torch.device("cpu"))
    backend = resolve_backend(backend, device)
    compile_ahead.start_hashing_triton(backend, device)
    compiled = compile_model(model, device)
    fused = FusedNetwork(compiled, default_cfg(model)).to(device=device, dtype=dtype).eval()
    fused.set_backend(backend)
    if cuda_graph == "auto":
        cuda_graph = backend != "torch" and device.type == "cuda"
    elif not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if cuda_graph:
        if backend == "torch" or device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a GPU backend (triton, cuda or auto), got {backend!r} on {device}"
            )
        fused.cuda_graph = True
        fused.cuda_graph_max_batch = cuda_graph_max_batch
    return fused
