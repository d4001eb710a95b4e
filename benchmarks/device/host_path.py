"""Where the host time of a call without a CUDA graph goes: `optimize(model, cuda_graph=False)`
called in a loop at small batches, where the host, not the GPU, bounds the call.

    python benchmarks/device/host_path.py --batch 1,8

Each step of the launch path is wrapped in a perf_counter timer (nested steps are counted in
their own row and in their callers'): the block's run, the kernel buffers, the packed block,
the stage kernel's launch (config lookup and Triton's launcher), each CUTLASS op call
(argument checks, tensor maps, the launch), and the rest of a block's Python. The GPU needs a
fraction of the host's time at these batches, so the launch queue never fills and the host
times are the host's own. Also prints the GPU time of the same call replayed from a CUDA graph.
`--ab INCEPTION_FAST_RELAUNCH` (or INCEPTION_FAST_OP_GROUPS, INCEPTION_FAST_PROGRAMS) compares a
switch read at each launch, in alternating rounds of calls in one process (the host's speed
drifts by up to 2x between and within processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import inception_fast
from inception_fast import bench, side_streams, timing
from inception_fast.backends import (
    auto_backend,
    gemm_routing,
    launch_program,
    torch_backend,
    triton_backend,
    triton_gemm_backend,
)
from inception_fast.kernels.triton import ops as triton_ops
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.modules import FusedBlock
from inception_fast.testing import calibrated_inception_v4

CALLS = 50


@contextmanager
def timed(spent: dict, counts: dict):
    """Wraps the steps in timers that add to spent[name] (seconds) and counts[name]."""
    patched = []

    def wrap(owner, attr: str, name: str):
        original = getattr(owner, attr)
        spent[name], counts[name] = 0.0, 0  # rows in wrapping order

        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
                counts[name] += 1

        setattr(owner, attr, timed_call)
        patched.append((owner, attr, original))

    wrap(FusedBlock, "run", "block run (all of it)")
    wrap(auto_backend, "run_block", "auto: dispatch and the chosen backend")
    wrap(triton_gemm_backend, "run_block", "triton-gemm run_block")
    wrap(launch_program, "key", "  program key")
    wrap(launch_program, "replay", "  its program (buffers and launches from C++)")
    wrap(launch_program, "run", "  its launches one by one (no program yet)")
    wrap(torch_backend, "run_block", "torch run_block")
    wrap(triton_backend, "kernel_buffers", "kernel buffers (layout, torch.empty)")
    wrap(triton_backend, "to_kernel_layout", "  layout of the input")
    wrap(triton_backend, "_alloc", "  torch.empty channels_last")
    wrap(triton_backend, "_packed_block", "packed block lookup")
    wrap(triton_gemm_backend, "_split_block", "split lookup")
    wrap(triton_gemm_backend, "capturing", "capturing()")
    wrap(gemm_routing, "stage_is_small", "stage_is_small")
    wrap(side_streams, "run_side_by_side", "run_side_by_side (its launches included)")
    wrap(triton_backend, "_run_stage", "stage kernel launch (all of it)")
    wrap(triton_backend, "stage_config", "  stage_config")
    wrap(triton_backend, "stage_tiles", "  stage_tiles")
    wrap(triton_backend, "_split_k_buffers", "  _split_k_buffers")
    wrap(triton_ops, "triton_stage", "  triton_stage (routed launch)")
    wrap(triton_ops, "launch_stage_tensors", "    launch_stage_tensors")
    wrap(_stage_kernel, "run", "      Triton JITFunction.run")
    wrap(gemm_routing.GemmLaunch, "run", "CUTLASS GEMM op call")
    wrap(gemm_routing.ConvLaunch, "run", "CUTLASS conv op call")
    wrap(gemm_routing, "run_launches", "a small stage's CUTLASS launches (grouped or not)")
    try:
        yield
    finally:
        for owner, attr, original in reversed(patched):
            if owner is _stage_kernel:
                del owner.run  # the instance attribute: the class's method again
            else:
                setattr(owner, attr, original)


def ms_per_call(fused, x, calls: int) -> float:
    """Host ms per call over `calls` calls, the GPU idle before and drained after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fused(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def alternating(fused, x, variable: str, rounds: int = 12, calls: int = 20) -> str:
    """Host ms per call with `variable` at 1 and at 0, in alternating rounds of `calls` calls in
    this process: the host's speed drifts between processes and within one, so each round's
    pair is compared, and the medians."""
    saved = os.environ.get(variable)
    per_round = {"1": [], "0": []}
    try:
        for _ in range(rounds):
            for setting in ("1", "0"):
                os.environ[variable] = setting
                fused(x)
                per_round[setting].append(ms_per_call(fused, x, calls))
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved
    on, off = per_round["1"], per_round["0"]
    ratios = sorted(a / b for a, b in zip(on, off))
    return (f"{variable}: median {statistics.median(on):.3f} ms a call at 1, "
            f"{statistics.median(off):.3f} at 0; per-round ratio 1/0: median {statistics.median(ratios):.3f} "
            f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}, {rounds} rounds of {calls} calls)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    parser.add_argument("--ab", metavar="VARIABLE", help="also compare a switch read at each launch "
                        "(e.g. INCEPTION_FAST_RELAUNCH): rounds of calls at 1 and at 0, alternating")
    args = parser.parse_args(argv)
    dtype, tf32_on = bench.DTYPES[args.dtype]
    device = torch.device("cuda")
    model = calibrated_inception_v4(0).to(device)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}")
    with torch.inference_mode(), bench.tf32(tf32_on):
        fused = inception_fast.optimize(model, dtype=dtype, cuda_graph=False)
        for batch in map(int, args.batch.split(",")):
            x = bench.make_inputs(batch, 299, torch.float32, device, seed=0, sets=1)[0].to(dtype)
            for _ in range(5):
                fused(x)
            plain_ms = ms_per_call(fused, x, CALLS)
            spent, counts = defaultdict(float), defaultdict(int)
            with timed(spent, counts):
                wrapped_ms = ms_per_call(fused, x, CALLS)
            if args.ab:
                print(alternating(fused, x, args.ab))
            graph = timing.CapturedGraph(fused, x)
            gpu_ms = timing.time_graph(graph, [x], budget_ms=300).median_ms
            print(f"\nbatch {batch}: {plain_ms:.3f} ms a call without a graph ({wrapped_ms:.3f} with the "
                  f"timers); the GPU's time from a graph {gpu_ms:.3f} ms")
            print("| step | ms per call | calls per call | us each |\n|---|---|---|---|")
            for name, seconds in spent.items():  # in wrapping order: callers before their steps
                if not counts[name]:
                    continue
                per_call = seconds / CALLS * 1e3
                each = seconds / counts[name] * 1e6
                print(f"| {name} | {per_call:.3f} | {counts[name] / CALLS:.0f} | {each:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
