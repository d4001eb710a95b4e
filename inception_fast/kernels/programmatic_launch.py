"""Programmatic dependent launch (PDL, compute capability 9.0 and later) for the stage kernels:
a kernel launched with it may be scheduled while the kernel before it in the stream is still
finishing, instead of after it has drained. At small batches a block is a few kernels of a few
microseconds each, and the gap between two dependent launches is a sizeable part of each.

The rule that keeps it exact: every kernel launched this way (the Triton stage kernel, the
CUTLASS GEMM and conv ops) waits for the kernel before it to complete and its writes to be
visible (`griddepcontrol.wait`) before its first global memory access, and lets the next kernel
be scheduled (`griddepcontrol.launch_dependents`). The stage kernel waits first thing; the
CUTLASS kernels after their set-up (barriers, cluster sync, descriptor prefetch: no global
memory), so that the set-up overlaps the kernel before (csrc/gemm_conv1x1.cuh, kernel_entry).
A kernel launched without it (PyTorch's, cuDNN's, the other backends') waits as usual.

INCEPTION_FAST_PDL=0 turns it off; it is read at each launch (here and by the extension's ops),
so a process can compare both.
"""

from __future__ import annotations

import os

import torch

ENV = "INCEPTION_FAST_PDL"
_capable: dict = {}  # device index -> compute capability 9.0 or later


def enabled(device: torch.device) -> bool:
    """Whether launches on `device` use programmatic dependent launch."""
    setting = os.environ.get(ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV}={setting!r}: use 1 (programmatic dependent launch, the default) or 0")
    if setting == "0" or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    capable = _capable.get(index)
    if capable is None:
        capable = _capable[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return capable
