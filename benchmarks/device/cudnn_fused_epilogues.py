"""cuDNN's fused conv + bias + ReLU (`torch.cudnn_convolution_relu`, what the `torch` backend runs
on a GPU in fp16 / bf16) against `F.conv2d` with a bias, with and without the ReLU after it, on
Inception-v4's convs in channels_last: medians of CUDA events with the L2 flushed
(`inception_fast.timing`), the first call's wall time (cuDNN builds its plan), and each
result's largest error against an fp32 reference.

    python benchmarks/device/cudnn_fused_epilogues.py > cudnn_relu.log
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inception_fast import timing

SHAPES = [  # name, in channels, out channels, kernel, stride, padding, input size
    ("stem0", 3, 32, (3, 3), 2, (0, 0), 299), ("stem1", 32, 32, (3, 3), 1, (0, 0), 149),
    ("stem2", 32, 64, (3, 3), 1, (1, 1), 147), ("m3a", 64, 96, (3, 3), 2, (0, 0), 147),
    ("1x1_384_96", 384, 96, (1, 1), 1, (0, 0), 35), ("b1x7", 192, 224, (1, 7), 1, (0, 3), 17),
    ("1x1_1024_384", 1024, 384, (1, 1), 1, (0, 0), 17),
]
BATCHES = (1, 8, 32, 256)


def median_ms(fn) -> float:
    """The package's one way of timing: CUDA events, L2 flushed, median."""
    return timing.time_cuda(lambda i: fn(), warmup_ms=20.0, budget_ms=200.0).median_ms


def one_shape(dtype, name, cin, cout, kernel, s, pad, size, n) -> str:
    x = torch.randn(n, cin, size, size, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, *kernel, device="cuda", dtype=dtype) / (cin * kernel[0] * kernel[1]) ** 0.5
    w_cl = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, device="cuda", dtype=dtype)

    def conv(weight=w):
        return F.conv2d(x, weight, b, s, pad)

    def fused(weight=w_cl):
        return torch.cudnn_convolution_relu(x, weight, b, (s, s), pad, (1, 1), 1)

    start = time.perf_counter()
    y = fused()
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    ref = torch.relu(F.conv2d(x.float(), w.float(), b.float(), s, pad))
    plain = torch.relu(conv())
    return (
        f"{str(dtype)[6:]:8s} {name:13s} b{n:<4d} conv {median_ms(conv):.4f} "
        f"convCLw {median_ms(lambda: conv(w_cl)):.4f} conv+relu_ {median_ms(lambda: conv().relu_()):.4f} "
        f"fused(CLw) {median_ms(fused):.4f} fused(w) {median_ms(lambda: fused(w)):.4f} "
        f"first {first_ms:.0f}ms err fused {(y.float() - ref).abs().max().item():.3g} "
        f"plain {(plain.float() - ref).abs().max().item():.3g} "
        f"out_cl {y.is_contiguous(memory_format=torch.channels_last)}"
    )


def main() -> None:
    torch.backends.cudnn.benchmark = False  # the heuristics' choice, as a first call gets it
    torch.backends.cudnn.allow_tf32 = True
    print(torch.cuda.get_device_name(), torch.__version__, "cuDNN", torch.backends.cudnn.version())
    for dtype in (torch.float16, torch.float32):
        for shape in SHAPES:
            for n in BATCHES:
                print(one_shape(dtype, *shape, n), flush=True)


if __name__ == "__main__":
    main()
