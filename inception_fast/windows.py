"""The output size of a sliding window (a conv or a pool): one rule for every place that needs
it (the packed format, the Triton launch schedule, the backends' size checks, the plans)."""

from __future__ import annotations


def out_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = False) -> int:
    """Output positions along one dimension, by PyTorch's pooling rule. `ceil` (ceil_mode)
    rounds the window count up, so the last window may run past the input, but it must still
    start inside the input or its left padding (else it would see nothing)."""
    out = (size + 2 * pad - kernel + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out
