"""The shipped tiles of Inception-v4's pool-only stages against the pool rule (`tuning.pool_config`),
per stage and batch 1 / 8 / 32 / 256, each pair timed twice in alternating order.

    python benchmarks/device/shipped_pools.py      (from the repository root, on the GPU)
"""
import math
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks", "device"))
import torch
from pool_configs import block_inputs, pool_rests

import inception_fast
from inception_fast import packing as pk
from inception_fast.backends import precision_key, triton_backend
from inception_fast.kernels.triton import ops as triton_ops
from inception_fast.kernels.triton import tuning
from inception_fast.kernels.triton.stage_launch import stage_kinds, stage_tiles
from inception_fast.testing import calibrated_inception_v4

device = torch.device("cuda")
sms = torch.cuda.get_device_properties(device).multi_processor_count
name = torch.cuda.get_device_name(device).replace(" ", "_")
model = calibrated_inception_v4(0).to(device)
with torch.inference_mode():
    network = inception_fast.optimize(model, dtype=torch.float16, backend="triton-gemm", cuda_graph=False)
    for batch in (1, 8, 32, 256):
        x = torch.randn(batch, 3, 299, 299, device=device, dtype=torch.float16)
        seen = set()
        for block, x_in in block_inputs(network, x):
            for stage, state, (xk, work, out) in pool_rests(block, x_in):
                n, _, h, w = xk.shape
                sig = pk.stage_signature(stage)
                key = f"{sig}/{h}x{w}/b{tuning.batch_bucket(n)}/{precision_key(xk)}/{name}"
                shipped = tuning._shipped_config(key, device)
                if shipped is None or key in seen:
                    continue
                seen.add(key)

                def tiles(bm, bn, stage=stage, n=n, h=h, w=w):
                    return stage_tiles(stage, n, h, w, bm, bn)

                def launch(config, stage=stage, state=state, xk=xk, work=work, out=out, tiles=tiles):
                    scratch, counts = triton_backend._split_k_buffers(
                        stage, state, *xk.shape[:1], *xk.shape[2:], config, xk)
                    triton_ops.triton_stage(
                        xk, work, out, stage.problems, state.weights_for(stage, False), stage.bias,
                        stage.col_dst, stage.col_flags, scratch, counts, tiles(*config[:2]), *config, False,
                        *stage_kinds(stage))

                channels = math.gcd(*(r[pk.COLS] for r in stage.rows))  # as stage_config
                rule = tuning.pool_config(channels, tiles, sms)
                t = {c: tuning._time(launch, c) * 1e3 for c in (shipped, rule)}
                t2 = {c: tuning._time(launch, c) * 1e3 for c in (rule, shipped)}
                print(f"{block.plan.label} {sig} b{batch}: shipped {shipped} {t[shipped]:.1f} / "
                      f"{t2[shipped]:.1f} us, rule {rule} {t[rule]:.1f} / {t2[rule]:.1f} us", flush=True)
