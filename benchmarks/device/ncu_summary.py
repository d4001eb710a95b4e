"""Nsight Compute's CSV from `profile_blocks.py` as one Markdown table: a row per kernel launch.

    python benchmarks/device/ncu_summary.py ncu_blocks.csv > ncu_summary.md

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


def summarize(text: str) -> str:
    text = text[text.index('"ID"'):]  # ncu prints ==PROF== lines first
    rows = list(csv.reader(io.StringIO(text)))
    header, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    nvtx = next(i for i, name in enumerate(header) if name.startswith("thread Domain"))
    stalls = [name for name in header if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX)]
    lines = [
        "| range | kernel | grid | " + " | ".join(COLUMNS) + " | top stalls |",
        "|" + "---|" * (len(COLUMNS) + 4),
    ]
    for row in data:
        ranges = [part for part in row[nvtx].split(":") if part.startswith("blocks/")]
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
            f"| {ranges[0][7:] if ranges else '-'} | {kernel} | {row[col['Grid Size']]} | "
            + " | ".join(values) + f" | {top_text} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        print(summarize(f.read()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
