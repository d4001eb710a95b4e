"""Programmatic dependent launch (Hopper and newer): a stage launched with `launch_pdl=True`
is scheduled while the kernel before it drains, does its setup (the problem-table walk), then
waits in `gdc_wait` until that kernel has finished and its writes are visible. At small
batches, where a stage lasts a few microseconds, this hides most of the gap between launches.
Both intrinsics are no-ops in a kernel launched without the attribute.

Kernels call them only under a PDL constexpr, so the CPU interpreter never traces them.
INCEPTION_FAST_PDL=0 turns it off (plain launches, the same kernels otherwise).
"""

from __future__ import annotations

import os

import torch
import triton

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without the intrinsics: PDL stays off (see enabled())

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

    _AVAILABLE = False
else:
    _AVAILABLE = True


def enabled(x: torch.Tensor) -> bool:
    """PDL for a launch on `x`'s device: compute capability 9.0+, not while torch.compile
    traces (Inductor re-launches the kernel itself, without launch options it does not know)."""
    return (
        _AVAILABLE
        and os.environ.get("INCEPTION_FAST_PDL", "1") != "0"
        and x.is_cuda
        and torch.cuda.get_device_capability(x.device)[0] >= 9
        and not torch.compiler.is_compiling()
    )
