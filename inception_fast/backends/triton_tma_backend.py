"""The `triton-tma` backend: the `triton` backend with every stride-1 conv on the TMA conv kernel
(`kernels/triton/tma_conv_kernel.py`: tensor descriptors, a persistent grid over the stage's tiles),
the rest of each stage (pools, strided convs) on the stage kernel in a second launch:
INCEPTION_FAST_TMA=split as a backend of its own, so that `auto` can weigh it per block and
batch bucket. Measured on an H100 at batch 256, the TMA kernel runs Inception-v4's 1x1 stages
1.4-1.9x faster than the stage kernel and most kxk stages slower: a per-block choice, not a
default. Hopper (compute capability 9.0) and newer; fp16, bf16 and fp32 on TF32 (exact fp32
has no TMA path: its stages run on the stage kernel)."""

from __future__ import annotations

import torch

from . import triton_backend

TRITON_KERNELS = True  # a first call compiles Triton kernels (see inception_fast.compile_ahead)


def availability(device=None) -> tuple[bool, str]:
    ok, reason = triton_backend.availability(device)
    if not ok:
        return ok, reason
    major, minor = torch.cuda.get_device_capability(torch.device(device if device is not None else "cuda"))
    if major < 9:
        return False, f"the TMA kernel needs compute capability 9.0 or newer, this card has {major}.{minor}"
    return True, reason


def run_block(block, x: torch.Tensor) -> torch.Tensor:
    return triton_backend.run_stages(block, x, "split")
