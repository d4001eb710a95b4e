"""The TMA conv kernel under TRITON_INTERPRET=1 (whose tensor descriptors zero-fill out-of-bounds
boxes as the copy engine does): the hand-built stages of `stage_cases` in FLAT and BOX tiles,
and blocks of three networks with mixed stages split between the TMA kernel and the stage
kernel, against PyTorch. fp32 with exact dots must match to rounding; fp16 is held to the 2x
rule (the interpreter has no bf16). Outputs start as NaN, so a column never written fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stage_cases import CASES

pytestmark = pytest.mark.slow

# BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, box_w, per_sm, flatten, rows: FLAT tiles, a column
# tile wider than some problems, BOX tiles of 4x8 and 4x4 pixels, ROWS tiles.
CONFIGS = {"flat": (32, 16, 16, 4, 2, 0), "flat-n32": (32, 32, 16, 4, 2, 0),
           "box4x8": (32, 32, 16, 4, 2, 8), "box4x4": (16, 16, 16, 4, 2, 4),
           "rows": (32, 16, 16, 4, 2, 0, 1, 1, 1)}
# network, submodule, input channels, size: masked 1x7 and valid 3x3 convs (Mixed4a), the
# residual epilogue (Block35), a stage split around an include-pad average pool (Mixed_6b)
BLOCKS = {"v4-Mixed4a": ("inception_v4", "features.4", 160, 9),
          "irv2-Block35": ("inception_resnet_v2", "repeat.0", 320, 5),
          "v3-Mixed_6b": ("inception_v3", "Mixed_6b", 768, 5)}

SCRIPT = r"""
import json, os, sys, traceback
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import torch
from stage_cases import CASES, kernel_buffers, make_case
from inception_fast import architectures
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.kernels.triton.tma_conv import TmaConfig, launch_tma_stage, plan_stage
from inception_fast.kernels.triton.tma_conv_kernel import _tma_stage_kernel
from inception_fast.modules import fuse_block
from inception_fast.packing import pack_block
from inception_fast.testing import randomize_batchnorm, relative_l2

configs, blocks, tma_cases = (json.loads(arg) for arg in sys.argv[2:5])
STAGE_CONFIG = (32, 64, 16, 4, 2, 1)


def run(stages, x, work, out, config, ran):
    for stage in stages:
        tma = plan_stage(stage, allow_split=True)
        if tma is not None:
            launch_tma_stage(_tma_stage_kernel, tma, x, work, out, TmaConfig(*config), "ieee")
            ran.append("tma")
        for rest in [stage] if tma is None else [tma.rest] if tma.rest is not None else []:
            launch_stage(_stage_kernel, rest, x, work, out, STAGE_CONFIG, "ieee")
            ran.append("stage")


results = {}
for name in CASES:
    for label, config in configs.items():
        for dtype in (torch.float32, torch.float16):
            if name not in tma_cases and (label != "flat" or dtype != torch.float32):
                continue  # nothing for the TMA kernel here: one run shows that it stays out
            key = f"{name}/{label}/{str(dtype)[6:]}"
            print("case", key, flush=True)  # a crash names its case
            try:
                case = make_case(name)
                x, work, out = kernel_buffers(case, dtype, "cpu")
                ran = []
                run(case.packed("cpu", dtype), x, work, out, config, ran)
                expected = case.expected()
                results[key] = {
                    "finite": bool(torch.isfinite(out).all()), "ran": ran,
                    "error": relative_l2(out, expected),
                    "eager_error": relative_l2(case.torch_ops(case.x.to(dtype)), expected),
                }
            except Exception:
                results[key] = {"exception": traceback.format_exc()}
for label, (network, path, cin, size) in blocks.items():
    key = f"block/{label}"
    print("case", key, flush=True)
    try:
        torch.manual_seed(0)
        source = randomize_batchnorm(architectures.create(network).get_submodule(path)).eval()
        fused = fuse_block(source)
        x = torch.randn(3, cin, size, size + 2).relu_().contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = fused(x)
        oh, ow = fused.output_hw(x.shape[2], x.shape[3])
        results[key] = {"finite": True, "ran": [], "error": 0.0, "eager_error": 0.0}
        for config in ((32, 64, 64, 4, 2, 0), (32, 64, 64, 4, 2, 0, 1, 1, 1)):  # FLAT, ROWS
            out = torch.full((3, fused.plan.out_channels, oh, ow), float("nan"))
            work = torch.full((3, max(fused.plan.work_channels, 8), *x.shape[2:]), float("nan"))
            out, work = (t.contiguous(memory_format=torch.channels_last) for t in (out, work))
            run(pack_block(fused, "cpu", torch.float32), x, work, out, config, results[key]["ran"])
            results[key]["finite"] &= bool(torch.isfinite(out).all())
            results[key]["error"] = max(results[key]["error"], relative_l2(out, expected))
    except Exception:
        results[key] = {"exception": traceback.format_exc()}
print("RESULTS", json.dumps(results))
"""

# Cases with a stride-1 conv stage: the TMA kernel must run in them, not only the stage kernel.
TMA_CASES = {"avgpool_rewrite", "residual_relu", "residual_mixed_columns", "residual_3x3_no_relu",
             "conv5x5_pad2", "asymmetric_windows"}


@pytest.fixture(scope="module")
def interpreter_results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    tests_dir = str(Path(__file__).resolve().parent)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tests_dir, json.dumps(CONFIGS), json.dumps(BLOCKS),
         json.dumps(sorted(TMA_CASES))],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0 and "RESULTS " in done.stdout, (done.stdout + done.stderr)[-6000:]
    return json.loads(done.stdout.split("RESULTS ", 1)[1])


def _check(result, exact: bool):
    assert "exception" not in result, result.get("exception")
    assert result["finite"], "a channel slice was never written (or a NaN came out)"
    if exact:
        assert result["error"] < 1e-6, result
    else:  # at most 2x as far from the float64 result as PyTorch's fp16 ops
        assert result["error"] <= 2 * result["eager_error"] + 1e-6, result


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", sorted(TMA_CASES))
def test_stage_case_under_interpreter(interpreter_results, name, config, dtype):
    result = interpreter_results[f"{name}/{config}/{dtype}"]
    _check(result, dtype == "float32")
    assert "tma" in result["ran"], result["ran"]


@pytest.mark.parametrize("name", sorted(set(CASES) - TMA_CASES))
def test_stage_kernel_keeps_pools_and_strided_convs(interpreter_results, name):
    result = interpreter_results[f"{name}/flat/float32"]
    _check(result, exact=True)
    assert "tma" not in result["ran"], result["ran"]


@pytest.mark.parametrize("name", list(BLOCKS))
def test_network_block_under_interpreter(interpreter_results, name):
    result = interpreter_results[f"block/{name}"]
    _check(result, exact=True)
    assert "tma" in result["ran"], result["ran"]
