"""The Triton kernels on the CPU under TRITON_INTERPRET=1: every block type's packed stages run
through the stage kernel's launcher and must match the `torch` backend. Shapes are small
because the interpreter is slow; the interpreter has no bf16, so fp32 here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The interpreter must be chosen before triton is imported, so each case runs in a subprocess.
SCRIPT = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from inception_fast import reference as R
from inception_fast.backends.triton_backend import ALIGN
from inception_fast.kernels.triton.layout_kernel import _to_nhwc_padded_kernel, launch_to_nhwc_padded
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.modules import fuse_block
from inception_fast.packing import pack_block
from inception_fast.testing import randomize_batchnorm, relative_l2

name, batch, size, k_parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
factories = {
    "Stem0": (lambda: R.ConvBnRelu(3, 32, 3, stride=2), 3),
    "Mixed3a": (R.Mixed3a, 64), "Mixed4a": (R.Mixed4a, 160), "Mixed5a": (R.Mixed5a, 192),
    "InceptionA": (R.InceptionA, 384), "ReductionA": (R.ReductionA, 384),
    "InceptionB": (R.InceptionB, 1024), "ReductionB": (R.ReductionB, 1024),
    "InceptionC": (R.InceptionC, 1536),
}
factory, cin = factories[name]
block = randomize_batchnorm(factory()).eval()
fused = fuse_block(block)
x = torch.randn(batch, cin, size, size).relu_()
x = x[:, :, :, :]  # NCHW, a layout the boundary converts
with torch.no_grad():
    ref = block(x)
    spec = fused(x)
padded = -(-cin // ALIGN) * ALIGN
xk = torch.empty(batch, padded, size, size).contiguous(memory_format=torch.channels_last)
launch_to_nhwc_padded(_to_nhwc_padded_kernel, x, xk)
assert torch.equal(xk[:, :cin], x) and (padded == cin or xk[:, cin:].abs().sum() == 0)
oh, ow = fused.output_hw(size, size)
nan = float("nan")
out = torch.full((batch, fused.plan.out_channels, oh, ow), nan).contiguous(memory_format=torch.channels_last)
work = torch.full((batch, max(fused.plan.work_channels, 8), size, size), nan)
work = work.contiguous(memory_format=torch.channels_last)
for stage in pack_block(fused, "cpu", torch.float32, padded if padded != cin else None):
    for _ in range(2):  # split-K leaves its scratch zeroed: a second launch must agree
        launch_stage(_stage_kernel, stage, xk, work, out, (32, 64, 64, 4, 2, k_parts), "ieee")
assert torch.isfinite(out).all(), "a channel slice was never written"
err_ref, err_spec = relative_l2(out, ref), relative_l2(out, spec)
print(name, err_ref, err_spec)
assert err_ref < 1e-5 and err_spec < 1e-5, (err_ref, err_spec)
"""

# TF32: the kernels read weights rounded on the host and store activations rounded to TF32 (the
# tensor cores truncate what they read, which is then exact). So a tf32 launch on a rounded
# input equals an exact launch with rounded weights whose output is rounded afterwards, and
# differs from an exact launch with the raw weights (else nothing was rounded).
TF32_SCRIPT = r"""
import dataclasses, os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from inception_fast import reference as R
from inception_fast.kernels.triton.launch_state import round_to_tf32
from inception_fast.kernels.triton.layout_kernel import _to_nhwc_padded_kernel, launch_to_nhwc_padded
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.modules import fuse_block
from inception_fast.packing import pack_block
from inception_fast.testing import randomize_batchnorm, relative_l2

fused = fuse_block(randomize_batchnorm(R.ConvBnRelu(3, 32, 3)).eval())
x = torch.randn(2, 3, 6, 6)
xk = torch.empty(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
launch_to_nhwc_padded(_to_nhwc_padded_kernel, x, xk, round_tf32=True)
assert torch.equal(xk[:, :3], round_to_tf32(x)) and not torch.equal(xk[:, :3], x)
(stage,) = pack_block(fused, "cpu", torch.float32, 8)
work = torch.empty(1, 8, 1, 1).contiguous(memory_format=torch.channels_last)

def run(stage, precision):
    out = torch.full((2, 32, 4, 4), float("nan")).contiguous(memory_format=torch.channels_last)
    launch_stage(_stage_kernel, stage, xk, work, out, (32, 32, 16, 4, 2, 1), precision)
    return out

tf32 = run(stage, "tf32")
rounded = round_to_tf32(run(dataclasses.replace(stage, weights=round_to_tf32(stage.weights)), "ieee"))
exact = run(stage, "ieee")
print(relative_l2(tf32, rounded), relative_l2(tf32, exact))
assert torch.equal(round_to_tf32(tf32), tf32), "stored activations are not TF32 values"
assert relative_l2(tf32, rounded) < 1e-6 and relative_l2(tf32, exact) > 1e-5
"""


def test_tf32_rounds_inputs_and_weights_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", TF32_SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr


CASES = [  # name, batch, input size, split-K parts
    ("Stem0", 2, 9, 1),
    ("Mixed3a", 1, 7, 1),
    ("Mixed4a", 3, 5, 3),
    ("Mixed5a", 1, 5, 2),
    ("InceptionA", 3, 4, 1),
    ("InceptionA", 1, 4, 4),
    ("ReductionA", 1, 5, 1),
    ("InceptionB", 1, 3, 1),
    ("ReductionB", 1, 3, 8),
    ("InceptionC", 1, 3, 2),
]


@pytest.mark.parametrize("name,batch,size,k_parts", CASES, ids=[f"{c[0]}-split{c[3]}" for c in CASES])
def test_stage_kernel_under_interpreter(name, batch, size, k_parts):
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, str(batch), str(size), str(k_parts)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Pool-only stages (what the CUTLASS ops leave of a stage) on every pool tile the tuning offers:
# the same bits on every tile (each output sums its taps in one order), and torch's pooling.
POOL_SCRIPT = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
import torch.nn.functional as F
from inception_fast import packing as pk, plan as P, reference as R
from inception_fast.backends import gemm_routing
from inception_fast.kernels.triton import tuning
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm

name, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
factory, cin = {"Mixed3a": (R.Mixed3a, 64), "InceptionA": (R.InceptionA, 384),
                "ReductionB": (R.ReductionB, 1024)}[name]
torch.manual_seed(0)
fused = fuse_block(randomize_batchnorm(factory()).eval())
plan = fused.plan
x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
work = torch.randn(batch, plan.work_channels or 8, size, size).contiguous(memory_format=torch.channels_last)
channels = {pk.BUF_INPUT: cin, pk.BUF_WORK: plan.work_channels, pk.BUF_OUTPUT: plan.out_channels}
rests = [gemm_routing.split_rows(stage, channels, kxk=True).rest
         for stage in pk.pack_block(fused, "cpu", torch.float32, None)]
rests = [r for r in rests if r is not None and all(row[pk.KIND] != pk.CONV for row in r.rows)]
assert rests, "no pool-only stage"
oh, ow = fused.output_hw(size, size)
for rest in rests:
    width = min(row[pk.COLS] for row in rest.rows)
    configs = [c for c in tuning.pool_candidates(width, 1, 4) if c[1] == tuning.pool_width(width)]
    outs = []
    for config in configs:
        out = torch.full((batch, plan.out_channels, oh, ow), float("nan"))
        out = out.contiguous(memory_format=torch.channels_last)
        launch_stage(_stage_kernel, rest, x, work, out, config, "ieee")
        outs.append(out)
    for config, out in zip(configs, outs):
        assert torch.equal(out.nan_to_num(7.0), outs[0].nan_to_num(7.0)), config
    buffers = {P.INPUT: x, P.WORK: work}
    for i, op in enumerate(plan.ops):
        if not isinstance(op, P.Pool) or op.src.buffer == P.OUTPUT:
            continue
        src = buffers[op.src.buffer][:, op.src.start:op.src.stop].double()
        if op.kind == P.MAX:
            ref = F.max_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
        else:
            ref = F.avg_pool2d(src, op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode,
                               count_include_pad=op.kind == P.AVG_INCLUDE_PAD)
        if op.bias:
            ref = ref + getattr(fused, f"b{i}").double().view(1, -1, 1, 1)
        if op.relu:
            ref = ref.relu()
        dst = outs[0][:, op.dst.start:op.dst.stop] if op.dst.buffer == P.OUTPUT else None
        if dst is not None:
            assert torch.allclose(dst.double(), ref, rtol=1e-5, atol=1e-5), (name, op)
    print(name, len(configs), "configs")
"""


@pytest.mark.parametrize("name,batch,size", [("Mixed3a", 2, 7), ("InceptionA", 3, 5), ("ReductionB", 1, 5)])
def test_pool_tiles_under_interpreter(name, batch, size):
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", POOL_SCRIPT, name, str(batch), str(size)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configs" in result.stdout
