"""The persistent block kernel (one launch per block) on the CPU under TRITON_INTERPRET=1: every
Inception-v4 block type and blocks of the family (GoogLeNet's Inception, Inception-ResNet-v2's
Block35 with its residual, Inception-v3's InceptionE) in fp32 with exact dots, against the
`torch` backend and, bit for bit, against the stage kernel with the same tiles; NaN-poisoned
buffers; split-K; a second launch (the counters must have reset themselves).

The interpreter runs programs one after another in pid order, so the first program takes every
ticket and no wait ever spins: these tests check the waiting logic, not its timing. They do
check which producer tiles each tile waits for: the kernel records the counters each wait
read, and they must cover every source pixel the tile's window really reads (every tile of
the producer where the tile overwrites what the producer read). Racing programs are the GPU
tests' job (test_gpu_block_kernel.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The interpreter must be chosen before triton is imported: one subprocess runs every case and
# reports each one's findings as JSON, which the tests below read.
SCRIPT = r"""
import json, os, sys, traceback
os.environ["TRITON_INTERPRET"] = "1"
import torch
from inception_fast import packing as pk
from inception_fast import reference as R
from inception_fast.backends.triton_backend import ALIGN
from inception_fast.backends.triton_block_backend import pack_whole_block
from inception_fast.kernels.triton.block_kernel import (
    DEP_COUNT, DEP_START, FIRST, M_TILES, COL_TILES, PARTS, RECORD_DEPS, _block_kernel,
)
from inception_fast.kernels.triton.block_launch import block_schedule, launch_block_tensors, split_k_buffers
from inception_fast.kernels.triton.stage_kernel import _stage_kernel
from inception_fast.kernels.triton.stage_launch import launch_stage
from inception_fast.modules import fuse_block
from inception_fast.testing import randomize_batchnorm, relative_l2


def reuse_block():
    # A plan whose stage 2 overwrites the slice stage 1 read (and stage 0 wrote): its tiles wait
    # for all of those producers (WHOLE), not only for a window.
    from inception_fast.modules import FusedBlock
    from inception_fast.plan import INPUT, OUTPUT, WORK, BlockPlan, Conv, Slice, Write

    def conv(src, dst):
        return Conv(("c",), src, (3, 3), (Write(dst),), padding=(1, 1))

    plan = BlockPlan("Reuse", 8, 16, 16, (
        (conv(Slice(INPUT, 0, 8), Slice(WORK, 0, 8)), conv(Slice(INPUT, 0, 8), Slice(OUTPUT, 8, 16))),
        (conv(Slice(WORK, 0, 8), Slice(WORK, 8, 16)),),
        (conv(Slice(WORK, 8, 16), Slice(WORK, 0, 8)),),
        (conv(Slice(WORK, 0, 8), Slice(OUTPUT, 0, 8)),),
    ))
    params = [(torch.randn(8, 8, 3, 3) / 8, torch.randn(8) / 4) for _ in plan.ops]
    return FusedBlock(plan, params)


def family(name):
    if name == "reuse":
        return reuse_block(), 8
    if name == "googlenet_Inception":
        from torchvision.models.googlenet import Inception
        return Inception(40, 8, 16, 24, 8, 8, 16), 40
    if name == "irv2_Block35":
        from timm.models.inception_resnet_v2 import Block35
        return Block35(scale=0.17), 320
    if name == "v3_InceptionE":
        from torchvision.models.inception import InceptionE
        return InceptionE(2048), 2048
    factory, cin = {
        "Stem0": (lambda: R.ConvBnRelu(3, 32, 3, stride=2), 3),
        "Mixed3a": (R.Mixed3a, 64), "Mixed4a": (R.Mixed4a, 160), "Mixed5a": (R.Mixed5a, 192),
        "InceptionA": (R.InceptionA, 384), "ReductionA": (R.ReductionA, 384),
        "InceptionB": (R.InceptionB, 1024), "ReductionB": (R.ReductionB, 1024),
        "InceptionC": (R.InceptionC, 1536),
    }[name]
    return factory(), cin


def nan_buffer(*shape):
    return torch.full(shape, float("nan")).contiguous(memory_format=torch.channels_last)


def read_window_tiles(row, h, w, n, m_lo, m_hi, block_m):
    # Brute force: the first and last source pixel tiles any in-image tap of pixels m_lo..m_hi reads.
    oh, ow = pk.row_output_hw(row, h, w)
    lo, hi = None, None
    for m in range(m_lo, m_hi + 1):
        img, rem = divmod(m, oh * ow)
        r, c = divmod(rem, ow)
        for i in range(row[pk.KH]):
            for j in range(row[pk.KW]):
                ih, iw = r * row[pk.STRIDE] - row[pk.PAD_H] + i, c * row[pk.STRIDE] - row[pk.PAD_W] + j
                if 0 <= ih < h and 0 <= iw < w:
                    pixel = (img * h + ih) * w + iw
                    lo = pixel if lo is None else min(lo, pixel)
                    hi = pixel if hi is None else max(hi, pixel)
    return (lo // block_m, hi // block_m) if lo is not None else None


def run_case(name, batch, size, programs, config, launches):
    torch.manual_seed(0)
    module, cin = family(name)
    fused = module if name == "reuse" else fuse_block(randomize_batchnorm(module).eval())
    x = torch.randn(batch, cin, size, size).relu_() + 0.05
    with torch.no_grad():
        spec = fused(x)  # the torch backend
    padded = -(-cin // ALIGN) * ALIGN
    xk = torch.zeros(batch, padded, size, size).contiguous(memory_format=torch.channels_last)
    xk[:, :cin] = x
    oh, ow = fused.output_hw(size, size)
    plan = fused.plan
    work_channels = max(plan.work_channels, 8)
    packed = pack_whole_block(fused, "cpu", torch.float32, padded if padded != cin else None)
    block_m, block_n, k_parts = config[0], config[1], config[5]
    plan_s = block_schedule(packed.table.rows, packed.deps, batch, size, size, block_m, block_n, k_parts)
    schedule, deps, tickets = plan_s.schedule, plan_s.deps, plan_s.tickets
    schedule_t = torch.tensor(schedule, dtype=torch.int32)
    deps_t = torch.tensor(deps, dtype=torch.int32)
    counters = torch.zeros(plan_s.counters, dtype=torch.int32)
    scratch, counts = split_k_buffers(plan_s.slots, config, "cpu")
    if scratch is None:
        scratch, counts = torch.empty(1), torch.zeros(1, dtype=torch.int32)
    results = []
    for launch in range(launches):  # a second launch finds the counters the first one left
        out, work = nan_buffer(batch, plan.out_channels, oh, ow), nan_buffer(batch, work_channels, size, size)
        waits = torch.tensor([2**30, -1, 0], dtype=torch.int32).repeat(tickets * RECORD_DEPS)
        launch_block_tensors(
            _block_kernel, programs, tickets, xk, work, out, packed.table.problems, packed.table.weights,
            packed.table.bias, packed.table.col_dst, packed.table.col_flags, schedule_t, deps_t, counters,
            scratch, counts, config, "ieee", *packed.kinds, waits=waits,
        )
        results.append(out.clone())
        assert counters.abs().sum() == 0, f"launch {launch} left counters {counters.tolist()}"
        assert counts.abs().sum() == 0, f"launch {launch} left split-K counts {counts.tolist()}"
    # The stage kernel, one launch per stage, with the same tiles and no split-K.
    staged, work = nan_buffer(batch, plan.out_channels, oh, ow), nan_buffer(batch, work_channels, size, size)
    for stage in pk.pack_block(fused, "cpu", torch.float32, padded if padded != cin else None):
        launch_stage(_stage_kernel, stage, xk, work, staged, config, "ieee")

    # Each tile waited for a contiguous run of each producer's pixel tiles, which covers every
    # source pixel its window reads (all of them for a WHOLE dependency).
    uncovered, checked = [], 0
    rows = packed.table.rows
    waits = waits.view(tickets, RECORD_DEPS, 3).tolist()
    for p, sched in enumerate(schedule):
        p_oh, p_ow = pk.row_output_hw(rows[p], size, size)
        pixels = batch * p_oh * p_ow
        for local in range(sched[M_TILES] * sched[COL_TILES] * sched[PARTS]):
            ticket = sched[FIRST] + local
            pid_m = local // sched[PARTS] // sched[COL_TILES]
            m_lo, m_hi = pid_m * block_m, min(pixels, (pid_m + 1) * block_m) - 1
            need = read_window_tiles(rows[p], size, size, batch, m_lo, m_hi, block_m)
            for k, (q, whole) in enumerate(deps[sched[DEP_START]:sched[DEP_START] + sched[DEP_COUNT]]):
                q_tiles = schedule[q][M_TILES]
                lo, hi, count = waits[ticket][k]
                wanted = (0, q_tiles - 1) if whole else need and (need[0], min(need[1], q_tiles - 1))
                checked += wanted is not None
                if wanted is not None and not (lo <= wanted[0] and wanted[1] <= hi and count == hi - lo + 1):
                    uncovered.append((p, pid_m, q, wanted, (lo, hi, count)))
    return {
        "finite": bool(torch.isfinite(results[0]).all()),
        "error": relative_l2(results[0], spec),
        "same_as_stage_kernel": bool(torch.equal(results[0], staged)),
        "relaunch_equal": all(torch.equal(results[0], r) for r in results),
        "uncovered": uncovered[:5],
        "windows_checked": checked,
        "whole_dependencies": sum(whole for _, whole in deps) if any(packed.deps) else 0,
        "stages": len(plan.stages),
    }


findings = {}
for case in json.loads(sys.argv[1]):
    key = case[0]
    print("case", key, flush=True)  # a crash names its case
    try:
        findings[key] = run_case(*case[1:])
    except Exception:
        findings[key] = {"exception": traceback.format_exc()}
print("FINDINGS" + json.dumps(findings))
"""

# BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, split-K parts: several pixel and column tiles per
# problem; the blocks with 1024 channels and more take wider tiles (the interpreter's time
# goes per tile).
SMALL = (32, 32, 16, 4, 2, 1)
WIDE = (32, 64, 64, 4, 2, 1)
WIDER = (32, 128, 128, 4, 2, 1)
SPLIT2 = (32, 32, 16, 4, 2, 2)
SPLIT3 = (32, 64, 64, 4, 2, 3)
CASES = [  # id, block, batch, input size, programs, config, launches
    ("Stem0", "Stem0", 2, 9, 3, SMALL, 2),
    ("Mixed3a", "Mixed3a", 1, 7, 2, WIDE, 1),
    ("Mixed4a", "Mixed4a", 2, 7, 4, SMALL, 2),
    ("Mixed5a", "Mixed5a", 1, 5, 2, WIDE, 1),
    ("InceptionA", "InceptionA", 3, 5, 3, WIDE, 2),
    ("InceptionA-split3", "InceptionA", 1, 5, 3, SPLIT3, 2),
    ("ReductionA", "ReductionA", 1, 5, 2, WIDE, 1),
    ("InceptionB", "InceptionB", 1, 4, 5, WIDER, 1),
    ("ReductionB", "ReductionB", 1, 5, 2, WIDER, 1),
    ("InceptionC", "InceptionC", 1, 3, 2, WIDER, 1),
    ("googlenet_Inception", "googlenet_Inception", 3, 7, 3, SMALL, 2),
    ("irv2_Block35", "irv2_Block35", 2, 5, 3, SMALL, 1),
    ("irv2_Block35-split2", "irv2_Block35", 1, 5, 2, SPLIT2, 2),
    ("v3_InceptionE", "v3_InceptionE", 1, 3, 2, WIDER, 1),
    ("reuse", "reuse", 2, 6, 3, SMALL, 2),
]


@pytest.fixture(scope="module")
def findings():
    """Every case's findings; two subprocesses share the cases (CI machines have two cores)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    runs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(CASES[half::2])], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for half in range(2)
    ]
    found = {}
    for run in runs:
        stdout, stderr = run.communicate(timeout=900)
        lines = [line for line in stdout.splitlines() if line.startswith("FINDINGS")]
        assert run.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
        found.update(json.loads(lines[-1].removeprefix("FINDINGS")))
    return found


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_block_kernel_under_interpreter(findings, case):
    found = findings[case]
    assert "exception" not in found, found.get("exception")
    assert found["finite"], "a channel slice was never written"
    assert found["error"] < 1e-4, found["error"]
    assert found["same_as_stage_kernel"], "the block kernel's tiles differ from the stage kernel's"
    assert found["relaunch_equal"], "a second launch differs: the counters did not reset"
    assert not found["uncovered"], f"tiles that wait for too few producer tiles: {found['uncovered']}"
    assert (found["windows_checked"] > 0) == (found["stages"] > 1), found  # not a vacuous check
    assert (found["whole_dependencies"] > 0) == (case == "reuse"), found
