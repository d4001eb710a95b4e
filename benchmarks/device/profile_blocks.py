"""Run each distinct block once per backend inside an NVTX range, for Nsight Compute.

    ncu --profile-from-start off --nvtx --section SpeedOfLight --section Occupancy \\
        --section LaunchStats --section WarpStateStats --csv --page raw \\
        python benchmarks/device/profile_blocks.py --batch 256 > ncu_blocks.csv

Without ncu it prints the event-timed median of each (block, backend) so the run is useful on
its own. Ranges are named "blocks/<Block>/<backend>"; warm-up (autotuning, first launches)
happens before the profiled range, which is also the only stretch with the CUDA profiler on
(hence --profile-from-start off).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from inception_fast import bench, timing
from inception_fast.backends import backend_status
from inception_fast.modules import fuse_block
from inception_fast.testing import calibrated_inception_v4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from floors import network_plans

FEATURE_PLANS = network_plans("inception_v4")[:22]  # the plans of `features`, by index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    parser.add_argument("--backends", default="eager,torch,triton,triton-gemm,cuda")  # unusable: skipped
    args = parser.parse_args(argv)
    dtype, tf32_on = bench.DTYPES[args.dtype]
    device = torch.device("cuda")
    reference = calibrated_inception_v4(0)
    x = bench.make_inputs(args.batch, 299, torch.float32, device, seed=0, sets=1)[0]
    seen = set()
    with torch.inference_mode(), bench.tf32(tf32_on):
        for index, plan in enumerate(FEATURE_PLANS):
            block = reference.features[index].to(device)
            if plan.name not in seen:
                seen.add(plan.name)
                inp = x.to(dtype=dtype, memory_format=torch.channels_last)
                for name in args.backends.split(","):
                    if name == "eager":
                        module = copy.deepcopy(block).to(dtype=dtype, memory_format=torch.channels_last)
                    else:
                        usable, reason = backend_status(name, device)
                        if not usable:
                            print(f"{plan.name} {name}: skipped ({reason})", file=sys.stderr)
                            continue
                        module = fuse_block(block).to(device=device, dtype=dtype).eval()
                        module.backend = name
                    for _ in range(3):
                        module(inp)
                    torch.cuda.synchronize()
                    torch.cuda.cudart().cudaProfilerStart()
                    torch.cuda.nvtx.range_push(f"blocks/{plan.name}/{name}")
                    module(inp)
                    torch.cuda.synchronize()
                    torch.cuda.nvtx.range_pop()
                    torch.cuda.cudart().cudaProfilerStop()
                    t = timing.time_callable(module, [inp], budget_ms=200)
                    print(f"{plan.name:<11} {name:<6} {t.median_ms:8.4f} ms", file=sys.stderr)
            x = block(x)  # the fp32 activations of the next block's input
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
