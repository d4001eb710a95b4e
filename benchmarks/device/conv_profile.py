"""The CUTLASS k x k conv op and cuDNN's conv on the same Inception-v4 convs, each launched once
inside an NVTX range, for Nsight Compute; and the names of the kernels cuDNN runs for them (its
tile shape is in the name), from the PyTorch profiler.

    ncu --profile-from-start off --nvtx --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section WarpStateStats --section LaunchStats --section Occupancy --csv --page raw \\
        python benchmarks/device/conv_profile.py --batch 256 > ncu_conv.csv
    python benchmarks/device/conv_profile.py --names   # cuDNN's kernel names, no ncu

Ranges are named "conv/<case>/<ours|cudnn>". cuDNN runs without a bias (the library floor's
conv); ours with its bias and ReLU, reading and writing channel slices, as the blocks run it.
Warm-up (cudnn.benchmark's search, the first launches) happens before the profiled stretch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from conv_fprop_check import CASES, case_tensors, slice_layout

from inception_fast import extension


def case_calls(op, case, batch, tile_n, on_line):
    """(ours, cudnn) as argument-free callables for one case of conv_fprop_check.CASES."""
    _, height, width, c, k, (r, s), stride, (pad_h, pad_w) = case
    x, weight, bias, out = case_tensors(batch, height, width, c, k, r, s, stride, pad_h, pad_w, on_line)
    in_c0, out_c0 = slice_layout(c, on_line)[0], slice_layout(k, on_line)[0]
    cudnn_in = x[..., in_c0 : in_c0 + c].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    kernel = weight.permute(0, 3, 1, 2)

    def ours():
        op(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, True, tile_n)

    def cudnn():
        F.conv2d(cudnn_in, kernel, None, stride=stride, padding=(pad_h, pad_w))

    return ours, cudnn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names (default: all)")
    parser.add_argument("--tile-n", type=int, default=0, help="the op's tile width (0: its model picks)")
    parser.add_argument("--names", action="store_true", help="print cuDNN's kernel names instead")
    parser.add_argument("--on-line", action="store_true", help="slices start 128-byte lines")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    extension.load()
    op = torch.ops.inception_fast.cuda_conv_fprop
    wanted = [part for part in args.cases.split(",") if part]
    cases = [case for case in CASES if not wanted or any(part in case[0] for part in wanted)]
    calls = {case[0]: case_calls(op, case, args.batch, args.tile_n, args.on_line) for case in cases}
    for ours, cudnn in calls.values():  # warm-up: the algorithm search and first launches
        for _ in range(3):
            ours()
            cudnn()
    torch.cuda.synchronize()
    if args.names:
        for name, (_, cudnn) in calls.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                cudnn()
                torch.cuda.synchronize()
            on_gpu = [event for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA]
            kernels = [event.name for event in on_gpu]
            print(f"{name} (batch {args.batch}): {' | '.join(kernels)}", flush=True)
        return 0
    torch.cuda.cudart().cudaProfilerStart()
    for name, (ours, cudnn) in calls.items():
        for label, call in (("ours", ours), ("cudnn", cudnn)):
            torch.cuda.nvtx.range_push(f"conv/{name}/{label}")
            call()
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
    torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
