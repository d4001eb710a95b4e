"""benchmarks/device/kernel_breakdown.py's kinds, on kernel names of the shape the profiler reports
for the CUTLASS ops (their template arguments written out)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "device"))

import kernel_breakdown

ENTRY = "void inception_fast::gemm_conv1x1::kernel_entry<cutlass::gemm::kernel::GemmUniversal<{}>>(...)"


@pytest.mark.parametrize(("arguments", "kind"), [
    ("Mainloop<KernelTmaWarpSpecializedPingpong>, MMA_64x128x16_F32F16F16_SS, void", "CUTLASS GEMM 128x128"),
    ("CollectiveConv<PersistentPingpong>, MMA_64x96x16_F32F16F16_SS, void", "CUTLASS conv 128x96"),
    ("CollectiveConv<PersistentCooperative>, MMA_64x128x16_F32F16F16_SS, void", "CUTLASS conv 256x128"),
    ("CollectiveConv<PersistentPingpong, cute::tuple<cute::C<64>, cute::C<64>, cute::tuple<cute::C<64> > >, "
     "cute::tuple<cute::C<1>, cute::C<1>, cute::C<1> > >, MMA_64x64x16_F32F16F16_SS, void",
     "CUTLASS conv 64x64"),
    ("CollectiveConv<PersistentCooperative>, MMA_64x64x16_F32F16F16_SS, inception_fast::SplitKSchedulerTag",
     "CUTLASS conv 128x64 split-K"),
    ("Mainloop<KernelTmaWarpSpecializedCooperative>, MMA_64x64x16_F32F16F16_SS, "
     "inception_fast::SplitKSchedulerTag", "CUTLASS GEMM 128x64 split-K"),
])
def test_cutlass_kernels_are_named_by_op_tile_and_split_k(arguments, kind):
    assert kernel_breakdown.kind(ENTRY.format(arguments)) == kind


# A mangled name of that shape (a 64 x 64 ping-pong conv tile), as the profiler reports long ones.
MANGLED_CONV_64X64 = (
    "_ZN14inception_fast12gemm_conv1x112kernel_entryINS_14CollectiveConvIJNS_10conv_fprop18Pers"
    "istentPingpongEN4cute5tupleIJNS5_1CILi1EEES8_S8_EEENS6_IJNS7_ILi64EEESA_NS6_IJSA_EEEEEENS5_25MMA_64x64x16_F32F16F16_SSEEEEEEvv"
)


def test_a_mangled_name_is_read_demangled():
    assert kernel_breakdown.kind(MANGLED_CONV_64X64) == "CUTLASS conv 64x64"


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
