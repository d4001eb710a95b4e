"""`optimize(model)`: a timm or reference Inception-v4 in, its fused form out."""

from __future__ import annotations

import torch
from torch import nn

from .backends import resolve_backend
from .checks import check_target
from .modules import FusedHead, FusedInceptionV4, fuse_block
from .plan import FEATURE_PLANS
from .reference import DEFAULT_CFG

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


def _check_model(model: nn.Module) -> None:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not hasattr(model, "last_linear"):
        raise TypeError(
            f"optimize() takes timm's inception_v4 or inception_fast.inception_v4, got "
            f"{type(model).__name__}"
        )
    names = [type(b).__name__ for b in features]
    expected = [p.name for p in FEATURE_PLANS]
    stem_ok = all(hasattr(b, "conv") and hasattr(b, "bn") for b in features[:3])
    if len(names) != len(expected) or names[3:] != expected[3:] or not stem_ok:
        raise TypeError(f"model.features does not have Inception-v4's 22 blocks: {names}")
    if model.training:
        raise RuntimeError(
            "optimize() folds BatchNorm statistics: put the model in eval mode first (model.eval())"
        )
    pool = getattr(model, "global_pool", None)
    pool_type = getattr(pool, "pool_type", "avg")
    if pool_type not in ("avg", "fast_avg") and not isinstance(pool, nn.AdaptiveAvgPool2d):
        raise TypeError(f"only global average pooling fuses, got {pool_type!r}")
    if not isinstance(model.last_linear, nn.Linear):
        raise TypeError("optimize() needs a Linear classifier (last_linear); num_classes=0 is not supported")


@torch.no_grad()
def optimize(
    model: nn.Module,
    backend: str = "auto",
    dtype=None,
    device=None,
    cuda_graph: bool = False,
    cuda_graph_max_batch: int = 64,
) -> FusedInceptionV4:
    """Fold and fuse an Inception-v4 for inference.

    Args:
        model: timm's ``inception_v4`` or ``inception_fast.inception_v4``, in eval mode.
        backend: ``"auto"`` (on a GPU, per block and batch bucket the faster of Triton and the
            CUDA extension, timed once and cached; PyTorch ops on the CPU), ``"torch"``,
            ``"triton"`` or ``"cuda"``.
        dtype: weights and activations dtype of the result (default: the model's).
        device: where the result lives (default: the model's device).
        cuda_graph: replay the whole forward as one CUDA graph, captured per input shape after
            the kernels are tuned, for batches up to ``cuda_graph_max_batch`` (launch-bound
            small batches gain most). GPU backends only. The returned logits are a fresh
            tensor each call.

    Returns:
        A ``FusedInceptionV4`` that maps NCHW images (any memory format) to the same logits.
    """
    check_target(device, dtype)
    _check_model(model)
    param = next(model.parameters())
    dtype = parse_dtype(dtype) if dtype is not None else param.dtype
    device = torch.device(device) if device is not None else param.device
    backend = resolve_backend(backend, device)
    blocks = [fuse_block(block) for block in model.features]
    fused = FusedInceptionV4(blocks, FusedHead(model.last_linear), getattr(model, "default_cfg", DEFAULT_CFG))
    fused = fused.to(device=device, dtype=dtype).eval()
    fused.set_backend(backend)
    if cuda_graph:
        if backend == "torch" or device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a GPU backend (triton, cuda or auto), got {backend!r} on {device}"
            )
        fused.cuda_graph = True
        fused.cuda_graph_max_batch = cuda_graph_max_batch
    return fused
