"""benchmarks/device/kernel_breakdown.py's kinds: on the CUTLASS kernels' names as the profiler
reports them (mangled: the names this build's library holds), and written out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from inception_fast import extension

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "device"))

import kernel_breakdown

ENTRY = "void inception_fast::gemm_conv1x1::kernel_entry<cutlass::gemm::kernel::GemmUniversal<{}>>(...)"
CLUSTER = "cute::tuple<cute::C<2>, cute::C<1>, cute::C<1> >"
ONE = "cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> >"


def tile(rows: int, width: int, k_block: int = 64) -> str:
    return f"cute::tuple<cute::C<{rows}>, cute::C<{width}>, cute::tuple<cute::C<{k_block}> > >"


@pytest.mark.parametrize(("arguments", "kind"), [
    (f"CollectiveMma<Mainloop<8, {CLUSTER}, KernelTmaWarpSpecializedPingpong>, {tile(128, 128)}, "
     "MMA_64x128x16_F32F16F16_SS>, void", "CUTLASS GEMM 128x128"),
    (f"CollectiveConv<Mainloop<0, 13, 2, {CLUSTER}, PersistentPingpong>, {tile(128, 96)}, "
     "MMA_64x96x16_F32F16F16_SS>, void", "CUTLASS conv 128x96"),
    (f"CollectiveConv<Mainloop<0, 13, 2, {CLUSTER}, PersistentCooperative>, {tile(256, 128)}, "
     "MMA_64x128x16_F32F16F16_SS>, void", "CUTLASS conv 256x128"),
    (f"CollectiveConv<Mainloop<0, 13, 2, {ONE}, PersistentPingpong>, {tile(64, 64)}, "
     "MMA_64x64x16_F32F16F16_SS>, void", "CUTLASS conv 64x64"),
    (f"CollectiveConv<Mainloop<{ONE}, PersistentCooperative>, {tile(128, 64)}, MMA_64x64x16_F32F16F16_SS>, "
     "inception_fast::SplitKSchedulerTag", "CUTLASS conv 128x64 split-K"),
])
def test_written_out_names_are_read_by_op_tile_and_split_k(arguments, kind):
    assert kernel_breakdown.kind(ENTRY.format(arguments)) == kind


def _library_kernel_names(library: Path) -> list[str]:
    """The mangled names of the library's CUTLASS kernels, from their host stubs' symbols
    (`...<length>__device_stub_<name>...`)."""
    symbols = subprocess.run(["nm", str(library)], capture_output=True, text=True, check=True).stdout
    names = set()
    entry = "_ZN14inception_fast12gemm_conv1x112kernel_entry"
    for match in re.finditer(rf"(\d+)__device_stub_({entry})", symbols):
        stub = symbols[match.start(2) - len("__device_stub_"):][:int(match.group(1))]
        names.add(stub[len("__device_stub_"):])
    return sorted(names)


@pytest.mark.skipif(shutil.which("nm") is None or extension.find_cuda_home() is None,
                    reason="needs nm and a CUDA toolkit (the extension's build)")
def test_every_kernel_of_the_build_is_named_by_its_tile():
    """The names the profiler reports: every tile shape each op is built with, read from the
    mangled names (the demangler gives up on them)."""
    names = _library_kernel_names(extension.load())
    if not names:
        pytest.skip("the extension was built without the CUTLASS headers")
    assert all(torch._C._demangle(name) == name for name in names)  # why the kinds read them mangled
    assert {kernel_breakdown.kind(name) for name in names} == {
        "CUTLASS GEMM 128x64", "CUTLASS GEMM 128x128", "CUTLASS GEMM 128x256", "CUTLASS GEMM 64x64",
        "CUTLASS GEMM 128x64 split-K", "CUTLASS conv 128x64", "CUTLASS conv 128x96", "CUTLASS conv 128x128",
        "CUTLASS conv 64x64", "CUTLASS conv 256x96", "CUTLASS conv 256x128", "CUTLASS conv 128x64 split-K",
    }


def test_other_kernels_keep_their_own_name():
    assert kernel_breakdown.kind("_stage_kernel<128, 64>(float*, int)") == "_stage_kernel"


def _event(name, start, end, stream):
    return SimpleNamespace(name=name, device_type=torch.autograd.DeviceType.CUDA, device_resource_id=stream,
                           time_range=SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start))


def test_the_graph_timeline_takes_the_last_replay_and_counts_idle_and_side_by_side_time():
    """Two replays of three kernels: the second (from 100 us) has a 2 us gap and 1 us of two kernels
    at once; the first replay is left out."""
    replay = [("a", 0, 5, 7), ("b", 4, 8, 9), ("c", 10, 12, 7)]
    events = [_event(n, s + offset, e + offset, st) for offset in (0, 100) for n, s, e, st in replay]
    cpu = SimpleNamespace(name="block", device_type=torch.autograd.DeviceType.CPU)
    lines = kernel_breakdown.graph_timeline_lines(SimpleNamespace(events=lambda: [cpu, *events[::-1]]), 2)
    text = "\n".join(lines)
    assert "3 GPU events" in text
    assert "span 12.0 us; some kernel running 10.0 us; none 2.0 us in 1 gaps" in text
    assert "two or more side by side 1.0 us" in text
    assert "longest gaps (us at us): 2.0 at 8" in text
    assert lines[-3:] == ["| 0.0 | 5.0 | 7 | a |", "| 4.0 | 4.0 | 9 | b |", "| 10.0 | 2.0 | 7 | c |"]
