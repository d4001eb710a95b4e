"""benchmarks/device/kernel_breakdown.py's kinds, on kernel names of the shape the profiler reports
for the CUTLASS ops (their template arguments written out)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "device"))

import kernel_breakdown

ENTRY = "void inception_fast::gemm_conv1x1::kernel_entry<cutlass::gemm::kernel::GemmUniversal<{}>>(...)"


@pytest.mark.parametrize(("arguments", "kind"), [
    ("Mainloop<KernelTmaWarpSpecializedPingpong>, MMA_64x128x16_F32F16F16_SS, void", "CUTLASS GEMM 128x128"),
    ("CollectiveConv<PersistentPingpong>, MMA_64x96x16_F32F16F16_SS, void", "CUTLASS conv 128x96"),
    ("CollectiveConv<PersistentCooperative>, MMA_64x128x16_F32F16F16_SS, void", "CUTLASS conv 256x128"),
    ("CollectiveConv<PersistentCooperative>, MMA_64x64x16_F32F16F16_SS, inception_fast::SplitKSchedulerTag",
     "CUTLASS conv 128x64 split-K"),
    ("Mainloop<KernelTmaWarpSpecializedCooperative>, MMA_64x64x16_F32F16F16_SS, "
     "inception_fast::SplitKSchedulerTag", "CUTLASS GEMM 128x64 split-K"),
])
def test_cutlass_kernels_are_named_by_op_tile_and_split_k(arguments, kind):
    assert kernel_breakdown.kind(ENTRY.format(arguments)) == kind


def test_other_kernels_keep_their_own_name():
    assert kernel_breakdown.kind("_stage_kernel<128, 64>(float*, int)") == "_stage_kernel"
