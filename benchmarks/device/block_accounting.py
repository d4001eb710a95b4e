"""Per-block accounting of the default fused Inception-v4: each block's time beside the time of
its convs alone in cuDNN, its compute / memory floor, and Nsight Compute's counters.

    python benchmarks/device/block_accounting.py measure --batch 256 --json acc.json
    ncu --profile-from-start off --nvtx --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --csv --page raw \\
        python benchmarks/device/block_accounting.py profile --batch 256 > ncu.csv
    python benchmarks/device/block_accounting.py table acc.json ncu.csv > table.md   (or ncu.csv.gz)

- `measure`: `optimize(model)` as a user calls it (backend `auto`, the shipped choices), one
  forward to find each block's input and the backend `auto` picked; then each block alone,
  replayed from a CUDA graph (`inception_fast.timing`: events, L2 flushed, median), every conv
  of the source block alone in cuDNN (`inception_fast.conv_floor`), and the block's compute and
  memory floors (`inception_fast.costs` at the peaks of `benchmarks/floors.py`: 708 TFLOP/s and
  3.0 TB/s on an H100, or this card's with `--peaks measure`).
- `profile`: the same model, without SM shares (INCEPTION_FAST_SM_SHARES=0: Nsight Compute runs
  the launches one at a time, so each takes every SM); the first block of each kind runs once
  with the CUDA profiler on, inside an NVTX range `blocks/<path>`, the GPU synchronized around it.
- `table`: one row per kind of block (instances with the same plan and input size), the
  counters weighted by each kernel's duration.

The block times are the kernels a block launches, timed alone: the whole network is their sum
plus the head, minus nothing (blocks run one after another).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
COUNTERS = {  # column -> Nsight Compute metric, weighted by kernel duration
    "tensor %": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "DRAM %": "dram__cycles_active.avg.pct_of_peak_sustained_elapsed",
    "SM %": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "warps %": "sm__warps_active.avg.pct_of_peak_sustained_active",
}
DURATION = "gpu__time_duration.sum"
NOT_STALLS = {f"{STALL_PREFIX}selected{STALL_SUFFIX}"}  # a warp issuing: 1.0 per issue by definition


def _model(batch: int, dtype_name: str):
    import torch

    import inception_fast
    from inception_fast import bench
    from inception_fast.testing import calibrated_inception_v4

    dtype, _ = bench.DTYPES[dtype_name]
    device = torch.device("cuda")
    source = calibrated_inception_v4(0).to(device)
    x = bench.make_inputs(batch, 299, torch.float32, device, seed=0, sets=1)[0].to(dtype)
    fused = inception_fast.optimize(source, dtype=dtype, cuda_graph=False)
    for _ in range(3):  # compiles, packs and picks the backends: nothing of it is timed
        fused(x)
    return source, fused, x


def _group_key(block, x) -> str:
    return f"{block.plan.name} {x.shape[1]}x{x.shape[2]}x{x.shape[3]}"


def measure(args) -> int:
    import torch
    from floors import DTYPE_BYTES, measure_peaks, peaks_for
    from pool_configs import block_inputs

    from inception_fast import bench, conv_floor, costs, layer_census, timing
    from inception_fast.backends import precision_key
    from inception_fast.backends.auto_backend import batch_bucket

    dtype, tf32_on = bench.DTYPES[args.dtype]
    with torch.inference_mode(), bench.tf32(tf32_on):
        source, fused, x = _model(args.batch, args.dtype)
        torch.cuda.synchronize()
        network_ms = timing.time_callable(fused, [x], budget_ms=500).median_ms
        rows = []
        for block, x_in in block_inputs(fused, x):
            n, _, h, w = x_in.shape
            key = ("auto", x_in.device, precision_key(x_in), h, w, batch_bucket(n))
            picked = block.backend_cache.get(key, block.backend)
            graph = timing.CapturedGraph(block.run, x_in)
            ms = timing.time_graph(graph, [x_in], budget_ms=args.budget_ms).median_ms
            del graph
            rows.append({"path": block.plan.path, "label": block.plan.label, "kind": _group_key(block, x_in),
                         "backend": picked, "ms": ms, "flop": costs.flops(block.plan, h, w) * n,
                         "min_bytes": costs.min_bytes(block.plan, h, w, DTYPE_BYTES[args.dtype], n)})
            print(f"{block.plan.label:<28} {picked:<12} {ms:8.4f} ms", file=sys.stderr, flush=True)
        calls = layer_census.census(source, 299)
        floor = conv_floor.conv_floor(calls, args.batch, dtype, x.device, dtype_name=args.dtype)
    cudnn = {b.block: b.ms for b in floor.blocks}
    peaks = measure_peaks() if args.peaks == "measure" else peaks_for(torch.cuda.get_device_name())
    for row in rows:
        row["cudnn_ms"] = cudnn.get(row["path"], 0.0)
        floors = costs.floor_ms(row["flop"], row["min_bytes"], peaks[args.dtype], peaks["copy_tbps"])
        row["floor_ms"] = floors["floor_ms"]
        row["bound"] = "compute" if floors["compute_ms"] >= floors["memory_ms"] else "memory"
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
              "dtype": args.dtype, "commit": os.environ.get("INCEPTION_FAST_COMMIT", "unknown"),
              "peaks": peaks, "network_ms": network_ms, "cudnn_total_ms": floor.total_ms, "blocks": rows}
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def profile(args) -> int:
    # Nsight Compute runs kernels one at a time: a launch that keeps its side-by-side SM share
    # would run alone on part of the GPU and its counters would count the idle SMs.
    os.environ["INCEPTION_FAST_SM_SHARES"] = "0"
    import torch
    from pool_configs import block_inputs

    from inception_fast import bench

    _, tf32_on = bench.DTYPES[args.dtype]
    with torch.inference_mode(), bench.tf32(tf32_on):
        _, fused, x = _model(args.batch, args.dtype)
        seen = set()
        for block, x_in in block_inputs(fused, x):
            kind = _group_key(block, x_in)
            if kind in seen:
                continue
            seen.add(kind)
            block.run(x_in)  # the same call once more, unprofiled: nothing left to tune or compile
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            torch.cuda.nvtx.range_push(f"blocks/{block.plan.path}")
            block.run(x_in)
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
            torch.cuda.cudart().cudaProfilerStop()
    return 0


def _number(text: str) -> float:
    return float(text.replace(",", "")) if text not in ("", "n/a") else float("nan")


def ncu_by_path(text: str) -> dict:
    """Nsight Compute's raw CSV summed per NVTX range `blocks/<path>`: launches, kernel us, the
    counters and the stall reasons weighted by duration, and kernel us by kernel name."""
    text = text[text.index('"ID"'):]  # ncu prints ==PROF== lines first
    rows = list(csv.reader(io.StringIO(text)))
    header, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    nvtx = next(i for i, name in enumerate(header) if name.startswith("thread Domain"))
    stalls = [name for name in header if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX)]
    scale = 1e-3 if units[col[DURATION]] == "ns" else 1.0
    found: dict = {}
    for row in data:
        ranges = [part for part in row[nvtx].split(":") if part.startswith("blocks/")]
        if not ranges:
            continue
        entry = found.setdefault(ranges[0][len("blocks/"):], {
            "launches": 0, "us": 0.0, "weighted": defaultdict(float), "kernels": defaultdict(float),
            "by_kind": {}})
        us = _number(row[col[DURATION]]) * scale
        entry["launches"] += 1
        entry["us"] += us
        for name, metric in COUNTERS.items():
            entry["weighted"][name] += us * _number(row[col[metric]])
        for name in stalls:
            entry["weighted"][name] += us * _number(row[col[name]])
        kind = _kernel_kind(row[col["Kernel Name"]])
        entry["kernels"][kind] += us
        by_kind = entry["by_kind"].setdefault(kind, (0.0, defaultdict(float)))
        entry["by_kind"][kind] = (by_kind[0] + us, by_kind[1])
        for name, metric in COUNTERS.items():
            by_kind[1][name] += us * _number(row[col[metric]])
    return found


def _by_kernel_kind(counters: dict) -> dict:
    """kind -> (us, counters weighted by us) over every profiled range."""
    found: dict = {}
    for entry in counters.values():
        for kind, (us, weighted) in entry["by_kind"].items():
            total = found.setdefault(kind, [0.0, defaultdict(float)])
            total[0] += us
            for name, value in weighted.items():
                total[1][name] += value
    return found


def _kernel_kind(name: str) -> str:
    if "kernel_entry" in name or "cutlass" in name.lower():
        return "CUTLASS conv" if "Conv" in name else "CUTLASS GEMM"
    if "xmma" in name or "cudnn" in name.lower():
        return "cuDNN"
    return name.split("(")[0].split("<")[0].strip()[:24]


def table(args) -> int:
    result = json.loads(Path(args.json).read_text())
    counters = {}
    if args.ncu:  # the CSV as ncu wrote it, or gzipped
        path = Path(args.ncu)
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        counters = ncu_by_path(text)
    groups: dict = {}
    for row in result["blocks"]:
        groups.setdefault(row["kind"], []).append(row)
    lines = [
        f"Inception-v4, {result['dtype']}, batch {result['batch']}, {result['card']}, "
        f"torch {result['torch']}, commit {result['commit']}. Per block instance (`x`: instances); "
        "fused: the block alone from a CUDA graph; cuDNN: its convs alone; floor: max(compute, memory). "
        "Counters: Nsight Compute on the "
        "first instance, weighted by kernel duration (locked clocks).",
        "",
        "| block (x) | backend | fused ms | cuDNN convs ms | fused / cuDNN | floor ms | fused / floor "
        "| launches | kernels (us at ncu clocks) | " + " | ".join(COUNTERS) + " | top stalls |",
        "|" + "---|" * (10 + len(COUNTERS)),
    ]
    total = {"fused": 0.0, "cudnn": 0.0, "floor": 0.0}
    for kind, rows in groups.items():
        first = rows[0]
        count = len(rows)
        ms = sum(r["ms"] for r in rows) / count
        cudnn = sum(r["cudnn_ms"] for r in rows) / count
        floor = first["floor_ms"]
        total["fused"] += ms * count
        total["cudnn"] += cudnn * count
        total["floor"] += floor * count
        backends = "/".join(sorted({r["backend"] for r in rows}))
        entry = counters.get(first["path"])
        if entry and entry["us"] > 0:
            shares = [f"{entry['weighted'][name] / entry['us']:.0f}" for name in COUNTERS]
            stalls = [k for k in entry["weighted"] if k.startswith(STALL_PREFIX) and k not in NOT_STALLS]
            stalls = sorted(stalls, key=lambda k: -entry["weighted"][k])[:2]
            stall_text = ", ".join(f"{k[len(STALL_PREFIX):-len(STALL_SUFFIX)]} "
                                   f"{entry['weighted'][k] / entry['us']:.1f}" for k in stalls)
            kernels = ", ".join(f"{name} {us:.0f}" for name, us in
                                sorted(entry["kernels"].items(), key=lambda item: -item[1]))
            launches = str(entry["launches"])
        else:
            shares, stall_text, kernels, launches = ["-"] * len(COUNTERS), "-", "-", "-"
        label = f"{first['label'].split(' (')[0]} {kind.split(' ')[1]} ({count})"
        ratio = f"{ms / cudnn:.2f}" if cudnn else "-"
        lines.append(
            f"| {label} | {backends} | {ms:.3f} | {cudnn:.3f} | {ratio} | {floor:.3f} ({first['bound']}) | "
            f"{ms / floor:.2f} | {launches} | {kernels} | " + " | ".join(shares) + f" | {stall_text} |"
        )
    lines.append(
        f"| **sum over blocks** | | **{total['fused']:.3f}** | {total['cudnn']:.3f} | "
        f"{total['fused'] / total['cudnn']:.2f} | {total['floor']:.3f} | "
        f"{total['fused'] / total['floor']:.2f} | "
        + "| " * (2 + len(COUNTERS)) + "|"
    )
    lines += ["", f"Whole network, plain calls (no graph): {result['network_ms']:.3f} ms; every conv "
                  f"alone in cuDNN: {result['cudnn_total_ms']:.3f} ms."]
    if counters:
        lines += ["", "Counters by kernel kind over the profiled blocks (weighted by duration):", "",
                  "| kernel kind | us at ncu clocks | " + " | ".join(COUNTERS) + " |",
                  "|" + "---|" * (2 + len(COUNTERS))]
        for kind, (us, weighted) in sorted(_by_kernel_kind(counters).items(), key=lambda item: -item[1][0]):
            shares = " | ".join(f"{weighted[name] / us:.0f}" for name in COUNTERS)
            lines.append(f"| {kind} | {us:.0f} | {shares} |")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("measure", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=256)
        p.add_argument("--dtype", default="fp16")
        if name == "measure":
            p.add_argument("--json", required=True)
            p.add_argument("--budget-ms", type=float, default=300.0)
            p.add_argument("--peaks", default="card", choices=["card", "measure"])
    p = sub.add_parser("table")
    p.add_argument("json")
    p.add_argument("ncu", nargs="?")
    args = parser.parse_args(argv)
    return {"measure": measure, "profile": profile, "table": table}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
