"""Nsight Compute's CSV from `profile_blocks.py` as one Markdown table: a row per kernel launch,
or with --per-range a row per NVTX range (block / backend): its launches summed.

    python benchmarks/device/ncu_summary.py ncu_blocks.csv > ncu_summary.md
    python benchmarks/device/ncu_summary.py --per-range ncu_blocks.csv > ncu_per_block.md

Columns: the NVTX range (block / backend), kernel, grid, duration, SM and memory throughput,
tensor-pipe and DRAM activity (% of peak over the kernel's time), achieved occupancy,
registers per thread, dynamic shared memory, and the two largest warp stall reasons (cycles
per issued instruction).
"""

from __future__ import annotations

import csv
import io
import sys

STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
COLUMNS = {
    "duration us": "gpu__time_duration.sum",
    "SM %": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "mem %": "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "tensor %": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "DRAM %": "dram__cycles_active.avg.pct_of_peak_sustained_elapsed",
    "warps %": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "regs": "launch__registers_per_thread",
    "smem KB": "launch__shared_mem_per_block_dynamic",
}


def _number(text: str) -> float:
    return float(text.replace(",", "")) if text not in ("", "n/a") else float("nan")


def _table(text: str) -> tuple[list[str], list[str], list[list[str]], dict[str, int], int]:
    text = text[text.index('"ID"'):]  # ncu prints ==PROF== lines first
    rows = list(csv.reader(io.StringIO(text)))
    header, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    nvtx = next(i for i, name in enumerate(header) if name.startswith("thread Domain"))
    return header, units, data, col, nvtx


def _range(row: list[str], nvtx: int) -> str:
    ranges = [part for part in row[nvtx].split(":") if part.startswith("blocks/")]
    return ranges[0][7:] if ranges else "-"


def summarize_ranges(text: str) -> str:
    """A row per range: launches, summed kernel time, and the tensor-pipe, SM and occupancy
    shares weighted by each launch's duration."""
    _, units, data, col, nvtx = _table(text)
    duration = col["gpu__time_duration.sum"]
    scale = 1e-3 if units[duration] == "ns" else 1.0
    weighted = {"tensor %": COLUMNS["tensor %"], "SM %": COLUMNS["SM %"], "warps %": COLUMNS["warps %"]}
    totals: dict[str, dict[str, float]] = {}
    empty = {"launches": 0, "us": 0.0, **dict.fromkeys(weighted, 0.0)}
    for row in data:
        entry = totals.setdefault(_range(row, nvtx), dict(empty))
        us = _number(row[duration]) * scale
        entry["launches"] += 1
        entry["us"] += us
        for name, metric in weighted.items():
            entry[name] += us * _number(row[col[metric]])
    lines = [
        "| range | launches | kernel ms | " + " | ".join(weighted) + " |",
        "|" + "---|" * (len(weighted) + 3),
    ]
    for name, entry in totals.items():
        shares = " | ".join(f"{entry[key] / entry['us']:.1f}" for key in weighted)
        lines.append(f"| {name} | {entry['launches']} | {entry['us'] / 1000:.3f} | {shares} |")
    return "\n".join(lines)


def summarize(text: str) -> str:
    header, units, data, col, nvtx = _table(text)
    stalls = [name for name in header if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX)]
    lines = [
        "| range | kernel | grid | " + " | ".join(COLUMNS) + " | top stalls |",
        "|" + "---|" * (len(COLUMNS) + 4),
    ]
    for row in data:
        values = []
        for name, metric in COLUMNS.items():
            value = _number(row[col[metric]])
            if metric == "gpu__time_duration.sum" and units[col[metric]] == "ns":
                value /= 1000
            if name == "smem KB":
                value /= 1024
            values.append(f"{value:.0f}" if name in ("regs", "smem KB") else f"{value:.1f}")
        top = sorted(stalls, key=lambda name: -_number(row[col[name]]))[:2]
        top_text = ", ".join(
            f"{name[len(STALL_PREFIX):-len(STALL_SUFFIX)]} {_number(row[col[name]]):.1f}" for name in top
        )
        kernel = row[col["Kernel Name"]].split("(")[0][:28]
        lines.append(
            f"| {_range(row, nvtx)} | {kernel} | {row[col['Grid Size']]} | "
            + " | ".join(values) + f" | {top_text} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    per_range = "--per-range" in argv
    paths = [arg for arg in argv if arg != "--per-range"]
    with open(paths[0]) as f:
        print((summarize_ranges if per_range else summarize)(f.read()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
