"""One setting's effect on the CUDA-graph call: Inception-v4 optimized and captured once under
each value of an environment variable read at launch or capture time (INCEPTION_FAST_PDL,
INCEPTION_FAST_SIDE_STREAMS, INCEPTION_FAST_CUTLASS_SPLIT_K, ...), then timed in alternating
rounds in one process (the GPU's clocks and the host drift between processes), with each
value's relative error against fp32 eager.

    python benchmarks/device/setting_ab.py --env INCEPTION_FAST_PDL --values 1,0 [--batches 1,8]

Prints one line per batch (each value's median of the round medians, and the ratio to the
first value); writes $OUT/setting_ab_<env>.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import inception_fast
from inception_fast import bench, timing
from inception_fast.testing import calibrated_inception_v4, relative_l2


def compare(env: str, values: list[str], batch: int, rounds: int, dtype) -> dict:
    source = calibrated_inception_v4(0).cuda()
    x = bench.make_inputs(batch, 299, torch.float32, torch.device("cuda"), seed=0, sets=1)[0]
    with torch.inference_mode():
        reference = source(x).float()
    models, errors = {}, {}
    previous = os.environ.get(env)
    try:
        for value in values:
            os.environ[env] = value
            with torch.inference_mode():
                models[value] = inception_fast.optimize(source, dtype=dtype, cuda_graph=True)
                for _ in range(3):  # the capture and its warm-up run under this value
                    out = models[value](x.to(dtype))
                errors[value] = relative_l2(out.float(), reference)
    finally:
        if previous is None:
            os.environ.pop(env)
        else:
            os.environ[env] = previous
    x = x.to(dtype)
    times: dict = {value: [] for value in values}
    with torch.inference_mode():
        for _ in range(rounds):
            for value, model in models.items():
                samples = timing.time_cuda(lambda i, model=model: model(x), budget_ms=150, warmup_ms=20,
                                           max_reps=200, flush_l2=False)
                times[value].append(samples.median_ms)
    median = {value: statistics.median(t) for value, t in times.items()}
    line = ", ".join(f"{env}={v}: {median[v]:.4f} ms ({median[v] / median[values[0]]:.3f}x, "
                     f"error {errors[v]:.2e})" for v in values)
    print(f"batch {batch}: {line}", flush=True)
    return {"batch": batch, "ms": times, "median": median, "error": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--values", required=True, help="comma-separated; ratios are to the first")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    args = parser.parse_args(argv)
    dtype, tf32_on = bench.DTYPES[args.dtype]
    values = args.values.split(",")
    with bench.tf32(tf32_on):
        rows = [compare(args.env, values, int(b), args.rounds, dtype) for b in args.batches.split(",")]
    out_dir = os.environ.get("OUT")
    if out_dir:
        document = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "commit": os.environ.get("INCEPTION_FAST_COMMIT", "unknown"), "env": args.env,
                    "values": values, "dtype": args.dtype, "rows": rows}
        Path(out_dir, f"setting_ab_{args.env}.json").write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
