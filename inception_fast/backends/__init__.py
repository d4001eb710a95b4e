"""Backend registry. A backend runs fused blocks (`run_block`) and the head (`run_head`), and may
run a whole model (`run_model`). Backends import lazily so that a machine without Triton or
without the CUDA extension still imports the package."""

from __future__ import annotations

import importlib

BACKENDS = ("torch", "triton", "cuda")
_MODULES = {
    "torch": ".torch_backend",
    "triton": ".triton_backend",
    "cuda": ".cuda_backend",
}


def get_backend(name: str):
    """The backend module called `name`; ValueError for an unknown name."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    return importlib.import_module(_MODULES[name], __name__)


def backend_status(name: str, device=None) -> tuple[bool, str]:
    """(usable, reason) for a backend on `device` (default: the current CUDA device if any)."""
    try:
        backend = get_backend(name)
    except ImportError as err:  # an optional dependency is missing
        return False, f"cannot import: {err}"
    return backend.availability(device)


def resolve_backend(name: str, device) -> str:
    """Map 'auto' to the fastest usable backend on `device`; check the others are usable."""
    import torch

    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            ok, _ = backend_status("triton", device)
            if ok:
                return "triton"
        return "torch"
    ok, reason = backend_status(name, device)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not usable on {device}: {reason}")
    return name
