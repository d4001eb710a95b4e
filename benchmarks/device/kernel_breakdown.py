"""Where one fused forward's GPU time goes: every kernel of `optimize(model)(x)` under the torch
profiler, summed by kind, beside the forward's wall time and the time the GPU was busy.

    python benchmarks/device/kernel_breakdown.py --batch 256 --dtype fp16

Kinds: the CUTLASS k x k conv and 1x1 GEMM by tile shape (and split-K, where on), each Triton
kernel by name, cuDNN (and other library kernels) by name. "busy" is the union of the kernels'
intervals over every stream: kernel time above it ran side by side; wall time above it is the
GPU waiting (launches, stream joins). The profiled forwards run without a CUDA graph, so that
each kernel is seen; their wall time is also shown with a graph. With programmatic dependent
launch on (the default), a kernel's time includes its wait for the one before it
(INCEPTION_FAST_PDL=0 for the kernels' own times). Prints a table; writes
$OUT/kernel_breakdown_b<batch>_<dtype>.md when OUT is set.

`--graph-timeline` adds the CUDA-graph forward's own timeline: every kernel of one profiled
replay in start order (start, length, the graph's stream, kind), with the replay's span, the time
no kernel ran (and its longest gaps) and the time two or more ran side by side.

`--blocks` adds one more profiled forward with the GPU synchronized around every block, and a
table of each block's kernels by kind (run it with INCEPTION_FAST_SIDE_STREAMS=0 and
INCEPTION_FAST_PDL=0 for each kernel's own time).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.profiler import ProfilerActivity, profile

import inception_fast
from inception_fast import bench, timing
from inception_fast.modules import FusedBlock
from inception_fast.testing import calibrated_inception_v4

FORWARDS = 5  # profiled forwards; times are per forward


def kind(name: str) -> str:
    """A short kind for a kernel name: CUTLASS kernels by op and tile shape, others by name."""
    if "kernel_entry" in name:  # the width from the MMA atom, the rows from the tile shape
        conv = "CollectiveConv" in name
        split_k = "SplitKSchedulerTag" in name  # cooperative, 128 x 64 (csrc/split_k_scheduler.cuh)
        width = re.search(r"MMA_64x(\d+)x", name)
        rows = tile_rows(name)
        op = "CUTLASS conv" if conv else "CUTLASS GEMM"
        label = f"{op} {rows}x{width.group(1)}" if width and rows else op
        return f"{label} split-K" if split_k else label
    name = re.sub(r"<.*", "", name)  # templates: the kernel's own name
    return name[:70]


def tile_rows(name: str) -> int | None:
    """A CUTLASS kernel's CTA tile rows: the first compile-time integer of 64 or more in its
    collective's arguments (before the tile shape come only the cluster shape's 1s and 2s). The
    profiler reports these names mangled (the demangler gives up on them: `ILi128EE` is
    `C<128>`); written out, `cute::C<128>`."""
    start = max(name.find("CollectiveConv"), name.find("CollectiveMma"))
    if start < 0:
        return None
    values = re.findall(r"ILi(\d+)EE|cute::C<(\d+)>", name[start:])
    return next((int(a or b) for a, b in values if int(a or b) >= 64), None)


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


@contextlib.contextmanager
def block_ranges(module: torch.nn.Module):
    """Each FusedBlock's run in a profiler range named `block <i> <label>`, the GPU synchronized
    on entry and exit so that its kernels run inside that range."""
    blocks = [m for m in module.modules() if isinstance(m, FusedBlock)]
    for i, block in enumerate(blocks):
        def run(x, block=block, i=i, run=block.run):
            torch.cuda.synchronize()
            with torch.profiler.record_function(f"block {i:02d} {block.plan.label}"):
                out = run(x)
                torch.cuda.synchronize()
            return out

        block.run = run  # the network calls each block's run, not its forward
    try:
        yield
    finally:
        for block in blocks:
            del block.run


def graph_timeline_lines(prof, replays: int) -> list[str]:
    """The last of `replays` profiled graph replays: its span, idle time and gaps, and each kernel."""
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    last = events[(replays - 1) * len(events) // replays:]
    if not last:
        return ["", "graph timeline: no GPU events were recorded"]
    origin = last[0].time_range.start
    span = max(e.time_range.end for e in last) - origin
    intervals = [(e.time_range.start, e.time_range.end) for e in last]
    busy = busy_us(intervals)
    gaps, end = [], origin
    for start, stop in sorted(intervals):
        if start > end:
            gaps.append((start - end, end - origin))
        end = max(end, stop)
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    side_by_side, running, previous = 0.0, 0, origin
    for at, step in points:
        if running >= 2:
            side_by_side += at - previous
        running, previous = running + step, at
    longest = sorted(gaps)[-12:][::-1]
    lines = ["", f"## One CUDA-graph replay: {len(last)} GPU events", "",
             f"- span {span:.1f} us; some kernel running {busy:.1f} us; none {span - busy:.1f} us in "
             f"{len(gaps)} gaps; two or more side by side {side_by_side:.1f} us",
             "- longest gaps (us at us): " + ", ".join(f"{g:.1f} at {at:.0f}" for g, at in longest),
             "", "| start us | us | stream | kind |", "|---|---|---|---|"]
    for event in last:
        lines.append(f"| {event.time_range.start - origin:.1f} | {event.time_range.elapsed_us():.1f} | "
                     f"{event.device_resource_id} | {kind(event.name)} |")
    return lines


def per_block_lines(prof) -> list[str]:
    """Each block range's kernels, summed by kind (a kernel belongs to the range it starts in)."""
    events = prof.events()
    blocks = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                    if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("block "))
    kernels = [e for e in events  # (the ranges show on the GPU's timeline too)
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("block ")]
    lines = ["", "| block | kernel kind | us | launches |", "|---|---|---|---|"]
    for start, end, name in blocks:
        by_kind: dict = defaultdict(lambda: [0.0, 0])
        for event in kernels:
            if start <= event.time_range.start <= end:
                entry = by_kind[kind(event.name)]
                entry[0] += event.time_range.elapsed_us()
                entry[1] += 1
        for kernel_kind, (us, count) in sorted(by_kind.items(), key=lambda item: -item[1][0]):
            lines.append(f"| {name.split(' ', 2)[2]} | {kernel_kind} | {us:.1f} | {count} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    parser.add_argument("--names", action="store_true", help="also print each distinct kernel name")
    parser.add_argument("--blocks", action="store_true", help="also each block's kernels by kind")
    parser.add_argument("--graph-timeline", action="store_true", help="also one CUDA-graph replay's timeline")
    args = parser.parse_args(argv)
    dtype, tf32_on = bench.DTYPES[args.dtype]
    device = torch.device("cuda")
    model = calibrated_inception_v4(0).to(device)
    x = bench.make_inputs(args.batch, 299, torch.float32, device, seed=0, sets=1)[0].to(dtype)
    with torch.inference_mode(), bench.tf32(tf32_on):
        fused = inception_fast.optimize(model, dtype=dtype, cuda_graph=False)
        graphed = inception_fast.optimize(model, dtype=dtype, cuda_graph=True,
                                          cuda_graph_max_batch=args.batch)
        for module in (fused, graphed):
            for _ in range(3):
                module(x)
        torch.cuda.synchronize()
        wall = timing.time_callable(fused, [x], budget_ms=400).median_ms
        wall_graph = timing.time_callable(graphed, [x], budget_ms=400).median_ms
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(FORWARDS):
                fused(x)
            torch.cuda.synchronize()
        if args.graph_timeline:
            with profile(activities=[ProfilerActivity.CUDA]) as graph_prof:
                for _ in range(3):
                    graphed(x)
                    torch.cuda.synchronize()
        if args.blocks:
            activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
            with block_ranges(fused), profile(activities=activities) as block_prof:
                fused(x)
                torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if args.names:
        print("\n".join(sorted({e.name for e in kernels})))
    by_kind: dict = defaultdict(lambda: [0.0, 0])
    for event in kernels:
        entry = by_kind[kind(event.name)]
        entry[0] += event.time_range.elapsed_us() / FORWARDS
        entry[1] += 1 / FORWARDS
    total = sum(t for t, _ in by_kind.values())
    busy = busy_us([(e.time_range.start, e.time_range.end) for e in kernels]) / FORWARDS
    lines = [f"# Kernel time of one fused forward: Inception-v4, batch {args.batch}, {args.dtype}",
             "", f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"commit {os.environ.get('INCEPTION_FAST_COMMIT', 'unknown')}", "",
             f"- wall time per forward: {wall:.3f} ms without a CUDA graph, {wall_graph:.3f} ms with one",
             f"- kernel time: {total / 1e3:.3f} ms; GPU busy (union over streams): {busy / 1e3:.3f} ms "
             f"(profiled forwards, {FORWARDS})", "",
             "| kind | ms per forward | share of kernel time | launches |", "|---|---|---|---|"]
    for name, (us, count) in sorted(by_kind.items(), key=lambda item: -item[1][0]):
        lines.append(f"| {name} | {us / 1e3:.3f} | {100 * us / total:.1f}% | {count:g} |")
    if args.blocks:
        lines += per_block_lines(block_prof)
    if args.graph_timeline:
        lines += graph_timeline_lines(graph_prof, 3)
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, f"kernel_breakdown_b{args.batch}_{args.dtype}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
