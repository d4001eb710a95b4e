"""fp32 -> TF32 rounding inside the kernels (the host-side twin is `launch_state.round_to_tf32`)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to_tf32(x):
    """fp32 values rounded to TF32 (10 mantissa bits), to nearest with ties away from zero, as
    cuDNN rounds its TF32 inputs; the tensor cores alone drop the 13 low bits, a truncation
    bias that over 149 layers doubles the error at the logits."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
