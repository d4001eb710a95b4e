"""Backend registry. A backend is a module with two functions:

    availability(device) -> (usable: bool, reason: str)
    run_block(block: FusedBlock, x: NCHW tensor) -> NCHW tensor stored channels_last

`run_block` executes `block.plan` on the block's folded weights (`block.op_params(i)`), and
may keep what it prepares (packed weights) in `block.backend_cache`. A new backend is one new
module listed in `_MODULES`. Backends import lazily so that a machine without Triton or
without the CUDA extension still imports the package."""

from __future__ import annotations

import importlib

import torch

_MODULES = {
    "torch": ".torch_backend",
    "triton": ".triton_backend",
    "cuda": ".cuda_backend",
    "triton-block": ".triton_block_backend",  # one persistent launch per block
    "triton-tma": ".triton_tma_backend",  # stride-1 convs on the TMA conv kernel
    "cuda-gemm": ".cuda_gemm_backend",  # 1x1 convs on the CUTLASS sm90 GEMM op, the rest on cuda's
    "triton-gemm": ".triton_gemm_backend",  # convs on the CUTLASS sm90 ops, the rest on triton's
    "auto": ".auto_backend",  # per block and batch bucket, the fastest of the kernels and torch
}
BACKENDS = tuple(_MODULES)
# The backends `auto` weighs per block by default, in order of preference where nothing can be
# timed (triton-gemm only where the extension has the CUTLASS ops compiled in).
AUTO_CANDIDATES = ("triton", "triton-gemm", "cuda", "torch")
# Correct but not a default anywhere: `auto` weighs them where INCEPTION_FAST_AUTO_EXPERIMENTS
# names them, the bench times them where --backend names them.
EXPERIMENTAL = ("triton-block", "triton-tma", "cuda-gemm")


_loaded: dict = {}  # a plain dict lookup on the hot path, which torch.compile traces


def get_backend(name: str):
    """The backend module called `name`; ValueError for an unknown name."""
    backend = _loaded.get(name)
    if backend is None:
        if name not in _MODULES:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        backend = _loaded[name] = importlib.import_module(_MODULES[name], __name__)
    return backend


def backend_status(name: str, device=None) -> tuple[bool, str]:
    """(usable, reason) for a backend on `device` (default: the current CUDA device if any)."""
    if name not in _MODULES:
        get_backend(name)  # the error that lists the names
    try:
        backend = get_backend(name)
    except ImportError as err:  # an optional dependency is missing
        return False, f"cannot import: {err}"
    except ValueError as err:  # a setting it reads on import is wrong (the message names it)
        return False, str(err)
    return backend.availability(device)


def resolve_backend(name: str, device) -> str:
    """Map 'auto' to the fastest usable backend on `device`; check the others are usable."""
    import torch

    device = torch.device(device)
    if name == "auto":
        if device.type != "cuda":
            return "torch"
        usable = [b for b in ("triton", "cuda") if backend_status(b, device)[0]]
        # Whether the CUTLASS ops are compiled in is asked now, before any torch.compile trace
        # (see gemm_routing._compiled_in).
        backend_status("triton-gemm", device)
        # auto also weighs the torch backend (cuDNN), so one usable kernel backend is enough.
        return "auto" if usable else "torch"
    ok, reason = backend_status(name, device)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not usable on {device}: {reason}")
    return name


def precision_key(x: torch.Tensor) -> str:
    """The dtype as tuning and backend choices are keyed: exact fp32 ("float32-ieee") apart from
    fp32 on TF32 ("float32"), since the two run on different units."""
    name = str(x.dtype).removeprefix("torch.")
    if x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        name += "-ieee"
    return name
