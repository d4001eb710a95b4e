"""Compute and memory floors per block: how fast each block could possibly run on a card.

    python benchmarks/floors.py                      # markdown table, H100 fp16 batch 256
    python benchmarks/floors.py --card H200 --batch 32
    python benchmarks/floors.py --measure --json peaks.json   # on the GPU: this card's peaks

The work (FLOPs) and the minimum traffic (bytes) come from `inception_fast.costs`, counted from
the block plans. The peaks are *achievable* rates measured on the card (a large dense matmul,
a device-to-device copy), not datasheet numbers: a floor nobody can reach says little.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from functools import cache

from inception_fast import costs

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp32-tf32": 4}

# Measured with triton.testing.do_bench (shared/docs/inception_v4_blocks.md): 8192^3 bf16
# matmul and device copy. TF32 and FP32 are not measured there: half and 1/14 of the dense
# fp16 rate, the datasheet ratios, until `--measure` replaces them with this card's numbers.
DEFAULT_PEAKS = {
    "H100": {"fp16": 708.0, "bf16": 708.0, "fp32-tf32": 354.0, "fp32": 51.0, "copy_tbps": 3.0},
    "H200": {"fp16": 678.0, "bf16": 678.0, "fp32-tf32": 339.0, "fp32": 48.0, "copy_tbps": 4.2},
}


def peaks_for(card: str, measured: dict | None = None) -> dict:
    """Peaks for a card name such as 'NVIDIA H100 80GB HBM3'; measured ones win."""
    if measured:
        return measured
    for key, peaks in DEFAULT_PEAKS.items():
        if key.lower() in card.lower():
            return peaks
    return DEFAULT_PEAKS["H100"]


def measure_peaks(size: int = 8192) -> dict:
    """This card's dense matmul TFLOP/s per dtype and its device copy TB/s (median of do_bench)."""
    import torch
    from triton.testing import do_bench

    peaks = {"card": torch.cuda.get_device_name()}
    dtypes = {"fp16": (torch.float16, False), "bf16": (torch.bfloat16, False),
              "fp32-tf32": (torch.float32, True), "fp32": (torch.float32, False)}
    saved = torch.backends.cuda.matmul.allow_tf32
    for name, (dtype, tf32) in dtypes.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        ms = do_bench(lambda a=a, b=b: a @ b, return_mode="median")
        peaks[name] = 2 * size**3 / (ms * 1e-3) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = saved
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    peaks["copy_tbps"] = 2 * src.numel() / (ms * 1e-3) / 1e12  # read + write
    return peaks


@cache
def network_plans(model: str = "inception_v4") -> tuple:
    """The block plans of a network, as optimize() derives them (random weights: plans only)."""
    import inception_fast
    from inception_fast import architectures

    return tuple(b.plan for b in inception_fast.optimize(architectures.create(model), backend="torch").blocks)


def block_floors(
    image_size: int, batch: int, dtype: str, peaks: dict, model: str = "inception_v4"
) -> list[dict]:
    """One row per distinct block: its count in the network, work, traffic and floors."""
    plans = network_plans(model)
    counts = Counter(plans)
    rows, seen = [], set()
    for cost, plan in zip(costs.block_costs(list(plans), image_size, image_size), plans):
        if plan in seen:
            continue
        seen.add(plan)
        _, height, width = cost.in_shape
        flop = costs.flops(plan, height, width) * batch
        least = costs.min_bytes(plan, height, width, DTYPE_BYTES[dtype], batch)
        staged = costs.staged_bytes(plan, height, width, DTYPE_BYTES[dtype], batch)
        floor = costs.floor_ms(flop, least, peaks[dtype], peaks["copy_tbps"])
        rows.append({
            "block": plan.name, "count": counts[plan], "in_shape": cost.in_shape,
            "out_shape": cost.out_shape, "gflop": flop / 1e9, "min_mb": least / 1e6,
            "staged_mb": staged / 1e6,
            "compute_ms": floor["compute_ms"], "memory_ms": floor["memory_ms"],
            "staged_memory_ms": staged / (peaks["copy_tbps"] * 1e12) * 1e3,
            "bound": "compute" if floor["compute_ms"] >= floor["memory_ms"] else "memory",
            "intensity": flop / least,
        })
    return rows


def markdown(rows: list[dict], image_size: int, batch: int, dtype: str, peaks: dict) -> str:
    lines = [
        f"Floors at batch {batch}, {dtype}, {image_size}x{image_size}; peaks {peaks[dtype]:.0f} TFLOP/s, "
        f"{peaks['copy_tbps']:.1f} TB/s. Per block instance; `x` = instances in the network.",
        "",
        "| block | x | in (CxHxW) | GFLOP | min MB | staged MB | FLOP/byte | compute floor ms "
        "| memory floor ms | staged memory ms | bound by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(map(str, r["in_shape"]))
        lines.append(
            f"| {r['block']} | {r['count']} | {shape} | {r['gflop']:.1f} | {r['min_mb']:.1f} | "
            f"{r['staged_mb']:.1f} | {r['intensity']:.0f} | {r['compute_ms']:.4f} | {r['memory_ms']:.4f} | "
            f"{r['staged_memory_ms']:.4f} | {r['bound']} |"
        )
    total = {k: sum(r[k] * r["count"] for r in rows) for k in ("gflop", "compute_ms", "memory_ms")}
    whole_floor = sum(max(r["compute_ms"], r["memory_ms"]) * r["count"] for r in rows)
    lines.append(
        f"| **network** (sum over 22 blocks) | | | {total['gflop']:.0f} | | | | {total['compute_ms']:.3f} | "
        f"{total['memory_ms']:.3f} | | sum of per-block max: **{whole_floor:.3f} ms** |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="fp16")
    parser.add_argument("--card", default="H100", help="card whose default peaks to use")
    parser.add_argument("--peaks", help="JSON written by --measure (overrides --card)")
    parser.add_argument("--measure", action="store_true", help="measure this GPU's peaks")
    parser.add_argument("--json", help="with --measure: where to write the peaks")
    args = parser.parse_args(argv)
    measured = None
    if args.measure:
        measured = measure_peaks()
        print(json.dumps(measured, indent=1), file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(measured, indent=1) + "\n")
    elif args.peaks:
        measured = json.loads(Path(args.peaks).read_text())
    peaks = peaks_for(measured["card"] if measured else args.card, measured)
    print(markdown(block_floors(args.image_size, args.batch, args.dtype, peaks), args.image_size, args.batch,
                   args.dtype, peaks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
