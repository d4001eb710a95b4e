"""benchmarks/device/ncu_summary.py on a small Nsight Compute CSV of the shape `ncu --csv --page
raw` prints: the table per launch and the sums per NVTX range."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "device"))

import ncu_summary

METRICS = list(ncu_summary.COLUMNS.values())
STALL = ncu_summary.STALL_PREFIX + "wait" + ncu_summary.STALL_SUFFIX
HEADER = ["ID", "thread Domain:Push/Pop_Range:PL_Type", "Kernel Name", "Grid Size", *METRICS, STALL]
UNITS = ["", "", "", "", "ns", *[""] * (len(METRICS) - 1), ""]


def _row(launch_id, block, kernel, ns, tensor):
    values = {metric: "1" for metric in METRICS}
    values[ncu_summary.COLUMNS["duration us"]] = str(ns)
    values[ncu_summary.COLUMNS["tensor %"]] = str(tensor)
    domain = f"<default domain>:blocks/{block}:none"
    return [str(launch_id), domain, f"{kernel}(int)", "(1, 1, 1)", *[values[m] for m in METRICS], "2.5"]


def _csv(rows):
    quoted = [",".join(f'"{value}"' for value in row) for row in [HEADER, UNITS, *rows]]
    lines = ["==PROF== Connected to process 1", *quoted]
    return "\n".join(lines) + "\n"


TEXT = _csv([
    _row(0, "InceptionB/triton", "_stage_kernel", 3000, 40.0),
    _row(1, "InceptionB/triton", "_stage_kernel", 1000, 20.0),
    _row(2, "InceptionB/eager", "sm90_xmma", 2000, 10.0),
])


def test_one_row_per_launch_with_microseconds():
    lines = ncu_summary.summarize(TEXT).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| InceptionB/triton | _stage_kernel | (1, 1, 1) | 3.0 |")
    assert "wait 2.5" in lines[2]


def test_per_range_sums_time_and_weights_the_shares_by_duration():
    lines = ncu_summary.summarize_ranges(TEXT).splitlines()
    assert lines[0].startswith("| range | launches | kernel ms | tensor %")
    triton = next(line for line in lines if line.startswith("| InceptionB/triton |"))
    cells = [cell.strip() for cell in triton.strip("|").split("|")]
    # 3 + 1 us; tensor share (3 * 40 + 1 * 20) / 4 = 35
    assert cells[1:4] == ["2", "0.004", "35.0"]
    assert any(line.startswith("| InceptionB/eager | 1 | 0.002 | 10.0 |") for line in lines)
