"""The network input, NCHW in any strides, to NHWC with the channels zero-padded to a multiple
of 8 (16-byte rows for the stem conv's loads). One small launch at the model boundary; with
TF32 dots it also rounds the input to TF32, as the stage kernels round what they store."""

from __future__ import annotations

import triton
import triton.language as tl

from .tf32 import round_to_tf32


@triton.jit
def _to_nhwc_padded_kernel(
    x_ptr, y_ptr, P, C, HW, W, s_n, s_c, s_h, s_w,
    C_PAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ROUND_TF32: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    p_mask = offs_p < P
    p64 = offs_p.to(tl.int64)
    n = p64 // HW
    h = (p64 % HW) // W
    w = p64 % W
    src = x_ptr + (n * s_n + h * s_h + w * s_w)[:, None] + offs_c.to(tl.int64)[None, :] * s_c
    v = tl.load(src, mask=p_mask[:, None] & (offs_c < C)[None, :], other=0.0)
    if ROUND_TF32:
        v = round_to_tf32(v)
    store_mask = p_mask[:, None] & (offs_c < C_PAD)[None, :]
    tl.store(y_ptr + p64[:, None] * C_PAD + offs_c[None, :], v, mask=store_mask)


# The launch stays beside the kernel because it needs no torch: compile workers import this
# module without it (`compile_worker`), as they import the other kernel modules.
def launch_to_nhwc_padded(kernel, x, y, round_tf32: bool = False, block_p: int = 128):
    """x: [N, C, H, W] any strides; y: [N, C_PAD, H, W] channels_last, C_PAD >= C;
    round_tf32 only for fp32."""
    n, c, h, w = x.shape
    pixels = n * h * w
    kernel[(triton.cdiv(pixels, block_p),)](
        x, y, pixels, c, h * w, w, *x.stride(),
        C_PAD=y.shape[1], BLOCK_C=triton.next_power_of_2(y.shape[1]), BLOCK_P=block_p,
        ROUND_TF32=round_tf32,
    )
