"""A first look at every network of the family on a GPU: eager fp16 channels_last (plain and
CUDA graph) against the fused model (plain launches and CUDA graph), batches 1, 32 and 256,
median ms of CUDA events (inception_fast.timing). Prints a table, writes JSON to argv[1].

    python benchmarks/device/family_quick.py OUT.json [model ...]
"""

from __future__ import annotations

import json
import sys

import torch

from inception_fast import architectures, optimize, timing
from inception_fast.testing import calibrated_model

BATCHES = (1, 32, 256)


def main() -> int:
    out = sys.argv[1]
    names = sys.argv[2:] or ["inception_v4", "googlenet", "inception_v3", "inception_resnet_v2"]
    rows = []
    dtype = torch.float16
    for name in names:
        model = calibrated_model(name, seed=0).cuda()
        size = architectures.default_cfg(model)["input_size"][-1]
        eager = model.to(dtype).to(memory_format=torch.channels_last)
        fused = optimize(model, dtype=dtype, backend="triton")
        graphed = optimize(model, dtype=dtype, backend="triton", cuda_graph=True, cuda_graph_max_batch=256)
        for batch in BATCHES:
            inputs = [torch.randn(batch, 3, size, size, device="cuda", dtype=dtype).contiguous(
                memory_format=torch.channels_last) for _ in range(3)]
            with torch.inference_mode():
                results = {
                    "eager": timing.time_callable(eager, inputs),
                    "eager+graph": timing.time_graph(timing.CapturedGraph(eager, inputs[0]), inputs),
                    "fused": timing.time_callable(fused, inputs),
                    "fused+graph": timing.time_callable(graphed, inputs),
                }
            row = {"model": name, "batch": batch, **{k: round(v.median_ms, 3) for k, v in results.items()}}
            print(row, flush=True)
            rows.append(row)
    card = torch.cuda.get_device_name()
    with open(out, "w") as f:
        json.dump({"card": card, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{card}, fp16, median ms")
    print(f"{'model':<22}{'batch':>6}{'eager':>9}{'eager+g':>9}{'fused':>9}{'fused+g':>9}{'vs eager+g':>11}")
    for r in rows:
        ratio = r["eager+graph"] / r["fused+graph"]
        print(f"{r['model']:<22}{r['batch']:>6}{r['eager']:>9}{r['eager+graph']:>9}{r['fused']:>9}"
              f"{r['fused+graph']:>9}{ratio:>10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
