"""Measure backend="auto"'s per-block choices on this GPU for the family, at every batch bucket,
into a fresh cache, for the table `inception_fast/backends/shipped_choices.json` (a first call
on a card like this one then picks without timing):

    INCEPTION_FAST_CACHE_DIR=dir python benchmarks/device/auto_choices.py \
        [--models inception_v4,...] [--dtypes fp16,bf16,fp32-tf32] [--max-batch 4096] [--deadline-s 540]
        [--retime torch,...]

Each network runs once per power-of-two batch up to --max-batch (the buckets `auto` keys its
choices by), smallest batches first across the networks, plain launches (no whole-model CUDA
graph: `auto` times each block in graphs of its own). A batch that runs out of memory is
skipped. The choices land in `autoselect.json` of the cache directory; stops cleanly at
--deadline-s, so a call with a time limit keeps what it measured. Then

    python -m inception_fast.backends.shipped_choices DIR/autoselect.json

merges them into the shipped table. With --retime, only the backends named are timed (after a
change to them): the shipped times of the others are seeded into the fresh cache, and the entries
that the deadline left without a new time are dropped from it again, so the merge keeps theirs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from inception_fast import bench_models, cache, optimize
from inception_fast.backends import auto_backend, shipped_choices
from inception_fast.bench import DTYPES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="inception_v4,googlenet,inception_v3,inception_resnet_v2")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32-tf32")
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--retime", default="", help="comma-separated backends: time only these")
    args = parser.parse_args()
    retimed = [name for name in args.retime.split(",") if name]
    if retimed:
        _seed_without(retimed)
        try:
            return measure(args)
        finally:
            _drop_without(retimed)
    shipped_choices._table = {"card": None, "choices": {}}  # remaking the table: time every block
    return measure(args)


def _seed_without(retimed: list) -> None:
    """The fresh cache holds the shipped times minus those of `retimed`: `auto` times only them."""
    path = cache.BACKEND_CHOICES.path()
    if path.exists():
        raise SystemExit(f"--retime needs a fresh cache directory; {path} exists")
    seeded, card = {}, torch.cuda.get_device_name()
    for key, ms in shipped_choices._load()["choices"].items():
        kept = {name: t for name, t in ms.items() if name not in retimed}
        seeded[auto_backend.cache_key(card, key)] = {"backend": min(kept, key=kept.get), "ms": kept}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(seeded))
    cache.BACKEND_CHOICES.reset()
    shipped_choices._table = {"card": None, "choices": {}}  # the seeded cache decides


def _drop_without(retimed: list) -> None:
    path = cache.BACKEND_CHOICES.path()
    entries = json.loads(path.read_text())
    done = {key: entry for key, entry in entries.items() if all(name in entry["ms"] for name in retimed)}
    path.write_text(json.dumps(done))
    print(f"{len(done)} of {len(entries)} entries have new times for {', '.join(retimed)}", flush=True)


def measure(args) -> int:
    start = time.perf_counter()
    batches = [1 << i for i in range(args.max_batch.bit_length()) if 1 << i <= args.max_batch]
    specs = [bench_models.get(name) for name in args.models.split(",")]
    sources = [spec.build().eval() for spec in specs]  # random weights: choices depend on shapes only
    for dtype_name in args.dtypes.split(","):
        dtype, tf32 = DTYPES[dtype_name]
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        fused = [optimize(source, dtype=dtype, device="cuda", backend="auto", cuda_graph=False)
                 for source in sources]
        # Batch-major, so that a deadline cuts the largest batches of every network (whose
        # blocks then take the nearest bucket's choice) rather than whole networks.
        for batch in batches:
            for spec, model in zip(specs, fused):
                if time.perf_counter() - start > args.deadline_s:
                    print(f"deadline reached before {spec.name} {dtype_name} batch {batch}", flush=True)
                    return 0
                t = time.perf_counter()
                try:
                    x = torch.randn(batch, 3, spec.image_size, spec.image_size, device="cuda", dtype=dtype)
                    with torch.inference_mode():
                        model(x.contiguous(memory_format=torch.channels_last))
                    torch.cuda.synchronize()
                except torch.OutOfMemoryError:
                    # Larger batches of this network take the nearest bucket's choices.
                    print(f"{spec.name} {dtype_name} batch {batch}: out of memory", flush=True)
                else:
                    print(f"{spec.name} {dtype_name} batch {batch}: {time.perf_counter() - t:.1f} s "
                          f"(at {time.perf_counter() - start:.0f} s)", flush=True)
                x = None
                torch.cuda.empty_cache()
        del fused
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
