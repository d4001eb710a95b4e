"""The Triton stage kernel on the hand-built stages of `stage_cases` (ceil-mode pools, the
include-pad average pool, the residual epilogue, 5x5 and 7x7 windows) under TRITON_INTERPRET=1,
against the same computation in PyTorch ops. fp32 with exact dots must match to rounding; fp16
is held to the 2x rule against PyTorch's own fp16 ops (the interpreter has no bf16).
Outputs start as NaN, so a column never written fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stage_cases import CASES

pytestmark = pytest.mark.slow

# The interpreter must be chosen before triton is imported: one subprocess runs every case and
# reports each one's errors, which the tests below read.
SCRIPT = r"""
import json, os, sys, traceback
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import torch
from stage_cases import CASES, kernel_buffers, make_case
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.testing import relative_l2

results = {}
for name in CASES:
    for dtype, k_parts in ((torch.float32, 1), (torch.float32, 2), (torch.float16, 1)):
        key = f"{name}/{str(dtype)[6:]}/split{k_parts}"
        print("case", key, flush=True)  # a crash (an out-of-bounds access) names its case
        try:
            case = make_case(name)
            x, work, out = kernel_buffers(case, dtype, "cpu")
            for stage in case.packed("cpu", dtype):
                for _ in range(2):  # split-K leaves its scratch zeroed: a second launch must agree
                    launch_stage(_stage_kernel, stage, x, work, out, (32, 32, 16, 4, 2, k_parts), "ieee")
            expected = case.expected()
            eager = case.torch_ops(case.x.to(dtype))
            results[key] = {
                "finite": bool(torch.isfinite(out).all()),
                "shape": list(out.shape) == list(expected.shape),
                "error": relative_l2(out, expected),
                "eager_error": relative_l2(eager, expected),
            }
        except Exception:
            results[key] = {"exception": traceback.format_exc()}
print("RESULTS", json.dumps(results))
"""

DTYPES = [("float32", 1), ("float32", 2), ("float16", 1)]


@pytest.fixture(scope="module")
def interpreter_results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    tests_dir = str(Path(__file__).resolve().parent)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tests_dir], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 and "RESULTS " in done.stdout, (done.stdout + done.stderr)[-6000:]
    return json.loads(done.stdout.split("RESULTS ", 1)[1])


@pytest.mark.parametrize("dtype,k_parts", DTYPES, ids=[f"{d}-split{k}" for d, k in DTYPES])
@pytest.mark.parametrize("name", list(CASES))
def test_stage_op_under_interpreter(interpreter_results, name, dtype, k_parts):
    result = interpreter_results[f"{name}/{dtype}/split{k_parts}"]
    assert "exception" not in result, result.get("exception")
    assert result["shape"], "the case's output size differs from PyTorch's"
    assert result["finite"], "a channel slice was never written (or a NaN came out)"
    if dtype == "float32":
        assert result["error"] < 1e-6, result
    else:  # at most 2x as far from the float64 result as PyTorch's fp16 ops
        assert result["error"] <= 2 * result["eager_error"] + 1e-6, result
