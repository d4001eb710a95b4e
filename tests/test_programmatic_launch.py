"""Programmatic dependent launch (`kernels.programmatic_launch`): when it is on, and that the stage
kernel compiled for it waits for the kernel before it ahead of every memory access (a load before
the wait could read what that kernel has not written yet). The PTX is compiled for an H100
without a GPU; the launches themselves are checked on the GPU (test_gpu_programmatic_launch.py)."""

from __future__ import annotations

import re

import pytest
import torch

from inception_fast.kernels import programmatic_launch


def test_off_on_the_cpu_and_when_switched_off(monkeypatch):
    monkeypatch.delenv(programmatic_launch.ENV, raising=False)
    assert not programmatic_launch.enabled(torch.device("cpu"))
    monkeypatch.setenv(programmatic_launch.ENV, "0")
    assert not programmatic_launch.enabled(torch.device("cuda", 0))  # off before asking the card


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(programmatic_launch.ENV, "yes")
    with pytest.raises(ValueError, match="INCEPTION_FAST_PDL='yes'"):
        programmatic_launch.enabled(torch.device("cpu"))


def test_on_for_hopper_only(monkeypatch):
    monkeypatch.delenv(programmatic_launch.ENV, raising=False)
    monkeypatch.setattr(programmatic_launch, "_capable", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0) if index == 0 else (8, 0))
    assert programmatic_launch.enabled(torch.device("cuda", 0))
    assert not programmatic_launch.enabled(torch.device("cuda", 1))


def _stage_kernel_ptx(pdl: bool) -> tuple[str, object]:
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inception_fast.kernels.triton.stage_kernel import _stage_kernel

    pointers = {"x_ptr": "*fp16", "work_ptr": "*fp16", "out_ptr": "*fp16", "w_ptr": "*fp16",
                "bias_ptr": "*fp32", "col_dst_ptr": "*i32", "col_flags_ptr": "*i32", "prob_ptr": "*i64",
                "scratch_ptr": "*fp32", "count_ptr": "*i32"}
    constants = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, INPUT_PRECISION="tf32", HAS_CONV=True,
                     HAS_POOL=True, HAS_RESIDUAL=True, WIDE_INDEX=False, SPLIT_K=True, PDL=pdl)
    names = _stage_kernel.arg_names
    signature = {name: pointers.get(name, "constexpr" if name in constants else "i32") for name in names}
    src = ASTSource(_stage_kernel, signature, {(names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "num_stages": 3, "launch_pdl": pdl})
    return compiled.asm["ptx"], compiled.metadata


@pytest.mark.slow
def test_the_stage_kernel_waits_before_any_memory_access(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    ptx, metadata = _stage_kernel_ptx(pdl=True)
    assert metadata.launch_pdl
    body = ptx[ptx.index(".entry"):]
    wait = body.index("griddepcontrol.wait")
    # Reading the kernel's parameters (ld.param) is no memory access.
    first_access = re.search(r"\b(ld|st)\.(?!param)|\b(atom|red|cp\.async)\.", body)
    assert first_access is not None and wait < first_access.start(), "memory is touched before the wait"
    assert wait < body.index("griddepcontrol.launch_dependents")

    plain, metadata = _stage_kernel_ptx(pdl=False)
    assert not metadata.launch_pdl
    assert "griddepcontrol" not in plain
