"""Tile configs of the pool-only stages: what the CUTLASS ops leave of Inception-v4's stages
under `triton-gemm` (its max pools and the average-pool rewrite's pools), each timed on the
stage kernel over a grid of tiles, beside the rule's choice (`tuning.pool_config`) and the
conv tiles' rule that pool-only stages had before (`tuning.default_config`).

    python benchmarks/device/pool_configs.py --batches 256,32,1

Each time is the median of CUDA-graph replays (`tuning._time`). GB/s counts the bytes a pool
must move at least: its source slice read once, its destination slice written once. Prints a
table; writes $OUT/pool_configs.md, and every config's time to $OUT/pool_configs.json, when OUT
is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import inception_fast
from inception_fast import packing as pk
from inception_fast.backends import triton_backend, triton_gemm_backend
from inception_fast.kernels.triton import ops as triton_ops
from inception_fast.kernels.triton import tuning
from inception_fast.kernels.triton.stage_launch import stage_kinds, stage_tiles
from inception_fast.modules import FusedBlock
from inception_fast.testing import calibrated_inception_v4


def grid(channels: int) -> list[tuple]:
    """Every width that divides the channels, 16 to 512 rows up to 16384 elements, 2 to 8 warps."""
    configs = []
    for width in (128, 64, 32, 16):
        if channels % width:
            continue
        for rows in (16, 32, 64, 128, 256, 512):
            if rows * width <= 16384:
                configs += [(rows, width, 16, warps, 1, 1) for warps in (2, 4, 8)]
    return configs


def block_inputs(network, x):
    """Each FusedBlock's input in one forward."""
    inputs = {}
    blocks = [m for m in network.modules() if isinstance(m, FusedBlock)]
    for block in blocks:
        def run(t, block=block, run=block.run):
            inputs.setdefault(block, t)
            return run(t)

        block.run = run
    network(x)
    for block in blocks:
        del block.run
    return [(block, inputs[block]) for block in blocks if block in inputs]


def pool_rests(block, x_in):
    """(stage, state, kernel buffers) of each pool-only rest of the block's stages."""
    stages = triton_backend._packed_block(block, x_in)
    x, work, out = triton_backend.kernel_buffers(block, x_in)
    for split in triton_gemm_backend._split_block(block, x, stages, False):
        if split.rest is not None and not stage_kinds(split.rest[0])[0]:
            yield split.rest[0], split.rest[2], (x, work, out)


def time_stage(stage, state, buffers, sms: int) -> tuple[dict, tuple, tuple, float]:
    """(ms by config, the conv-tile rule's config, the pool rule's, bytes moved) of one stage."""
    xk, work, out = buffers
    n, _, h, w = xk.shape

    def tiles(bm, bn):
        return stage_tiles(stage, n, h, w, bm, bn)

    def launch(config):
        scratch, counts = triton_backend._split_k_buffers(stage, state, n, h, w, config, xk)
        triton_ops.triton_stage(
            xk, work, out, stage.problems, state.weights_for(stage, False), stage.bias, stage.col_dst,
            stage.col_flags, scratch, counts, tiles(*config[:2]), *config, False, *stage_kinds(stage),
        )

    channels = min(row[pk.COLS] for row in stage.rows)
    old = tuning.default_config(tuning.candidates(64, tuning.batch_bucket(n), False, 2), tiles, sms)
    new = tuning.pool_config(channels, tiles, sms)
    times = {c: tuning._time(launch, c) for c in {old, new, *grid(channels)}}
    moved = 0
    for p, row in enumerate(stage.rows):
        oh, ow = stage.output_hw(p, h, w)
        moved += (n * h * w + n * oh * ow) * row[pk.COLS] * xk.element_size()
    return times, old, new, moved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="256,32,1")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    model = calibrated_inception_v4(0).to(device)
    lines = [f"# Pool-only stages of Inception-v4 (fp16) on the stage kernel, {torch.cuda.get_device_name()}",
             "", f"commit {os.environ.get('INCEPTION_FAST_COMMIT', 'unknown')}", "",
             "| block | stage | batch | conv-tile rule: config, us | pool rule: config, us, GB/s "
             "| best of the grid: config, us, GB/s |", "|---|---|---|---|---|---|"]
    grid_times = []
    with torch.inference_mode():
        network = inception_fast.optimize(model, dtype=torch.float16, backend="triton-gemm", cuda_graph=False)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, 299, 299, device=device, dtype=torch.float16)
            seen = set()
            for block, x_in in block_inputs(network, x):
                for stage, state, buffers in pool_rests(block, x_in):
                    key = (pk.stage_signature(stage), *buffers[0].shape[2:])
                    if key in seen:
                        continue
                    seen.add(key)
                    times, old, new, moved = time_stage(stage, state, buffers, sms)
                    best = min(times, key=times.get)
                    us = {",".join(map(str, c)): t * 1e3 for c, t in times.items()}
                    grid_times.append({"block": block.plan.label, "stage": key[0], "batch": batch, "us": us})
                    cells = [f"{c}, {times[c] * 1e3:.1f}, {moved / times[c] / 1e6:.0f}" for c in (new, best)]
                    lines.append(f"| {block.plan.label} | {key[0]} | {batch} | {old}, {times[old] * 1e3:.1f} "
                                 f"| {cells[0]} | {cells[1]} |")
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "pool_configs.md").write_text(text)
        Path(os.environ["OUT"], "pool_configs.json").write_text(json.dumps(grid_times, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
