"""Input checks at the public boundary: each message says what was expected and what came."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def check_inference_input(module: torch.nn.Module, x, in_channels: int) -> None:
    """Validate an NCHW input for an inference-only fused module."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")
    if module.training:
        raise RuntimeError(
            f"{name} is inference-only (folded BatchNorm, no backward): call .eval() first"
        )
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} is inference-only and has no backward: got an input that requires grad; "
            "run under torch.inference_mode() / torch.no_grad() or pass x.detach()"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{name}: expected a 4-D NCHW input [N, {in_channels}, H, W], "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected {in_channels} input channels (NCHW dim 1), got {x.shape[1]} "
            f"in shape {tuple(x.shape)}"
        )
    weight = next(iter(module.buffers()), None)
    if weight is None:
        return
    if x.dtype != weight.dtype:
        raise TypeError(
            f"{name}: input dtype {x.dtype} does not match the module's {weight.dtype}; "
            f"cast the input with x.to({weight.dtype})"
        )
    if x.device != weight.device:
        raise ValueError(
            f"{name}: input is on {x.device} but the module's weights are on {weight.device}; "
            f"move one of them, e.g. x.to('{weight.device}')"
        )


# --- devices and dtypes ----------------------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def cuda_problem() -> str | None:
    """Why this process cannot use a CUDA GPU, in a sentence; None when it can."""
    if torch.version.cuda is None and torch.version.hip is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; a GPU needs a CUDA build of "
                "torch (see the set-up in the README)")
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here (no GPU, no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)"
    return None


def check_target(device, dtype) -> None:
    """optimize()'s `device` and `dtype`, checked before any work is done."""
    if device is not None:
        try:
            target = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(
                f"optimize(device={device!r}): not a device; use 'cpu', 'cuda' or 'cuda:N'"
            ) from None
        if target.type not in ("cpu", "cuda"):
            raise ValueError(f"optimize(device={device!r}): the fused model runs on 'cpu' or 'cuda' devices")
        if target.type == "cuda":
            problem = cuda_problem()
            if problem is not None:
                raise RuntimeError(
                    f"optimize(device={device!r}): {problem}. Use device='cpu' (the torch backend) or a "
                    "machine with an NVIDIA GPU."
                )
            count = torch.cuda.device_count()
            if target.index is not None and target.index >= count:
                raise ValueError(
                    f"optimize(device={device!r}): this machine has {count} CUDA device(s), "
                    f"cuda:0 to cuda:{count - 1}"
                )
    if isinstance(dtype, torch.dtype) and dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"optimize(dtype={dtype}): the fused model computes in floating point; use torch.float32, "
            "torch.float16, torch.bfloat16 or torch.float64"
        )


@contextmanager
def explain_cuda_moves(what: str):
    """`.cuda()` / `.to("cuda")` where no GPU can be used: one sentence instead of torch's
    "Found no NVIDIA driver" or "Torch not compiled with CUDA enabled"."""
    try:
        yield
    except (RuntimeError, AssertionError) as err:
        text = str(err).lower()
        problem = cuda_problem() if ("cuda" in text or "nvidia" in text) else None
        if problem is None:
            raise
        raise RuntimeError(
            f"{what} cannot move to a CUDA device: {problem}. The fused modules run on the CPU with the "
            "torch backend."
        ) from err
