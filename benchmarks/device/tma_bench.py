"""The TMA conv experiment, measured in one run (about 3 minutes on an H100):

    python benchmarks/device/tma_bench.py OUT.json [--batches 256,32] [--network inception_v4]

For every stage of the network (distinct blocks at their network sizes, fp16, channels_last
buffers of random ReLU'd values), at each batch:
- the stage kernel as the backend runs it (its cached, shipped or heuristic config);
- for stages with stride-1 convs: the TMA kernel (`kernels/triton/tma_conv_kernel.py`) on those
  convs, over a grid of tile configs, each first checked against the stage kernel's result
  from the same inputs (a config that disagrees is reported and not timed), plus the stage
  kernel on the stage's other problems (pools, strided convs), if any;
- cuDNN's F.conv2d on the same convs (merged as packed: a stage's 1x1 convs over one input
  are one GEMM), channels_last, cudnn.benchmark, no bias (the conv floor's rules).
Kernel times are medians of CUDA-graph replays of one launch, with the L2 flushed before each
(`inception_fast.timing`); cuDNN is timed as the conv floor times it. Prints a table per
batch and the network estimates (each stage counted as often as the network runs it): all
stages on the stage kernel, the best of stage kernel and TMA per stage, cuDNN's convs; writes
everything to OUT.json. Tile configs are compiled first in parallel worker processes (into
Triton's on-disk cache, which the timed process then reads).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from inception_fast import architectures, bench, conv_floor, timing
from inception_fast import packing as pk
from inception_fast.backends import triton_backend
from inception_fast.compiler import CompiledBlock, compile_model
from inception_fast.kernels.triton import tma_conv, tuning
from inception_fast.kernels.triton.stage_launch import stage_kinds
from inception_fast.kernels.triton.tma_conv import TmaConfig, launch_tma_stage
from inception_fast.kernels.triton.tma_conv_kernel import _tma_stage_kernel
from inception_fast.layer_census import ConvShape
from inception_fast.modules import FusedBlock
from inception_fast.testing import randomize_batchnorm, relative_l2

DTYPE = torch.float16
BUDGET_MS = 10.0  # GPU time per timed configuration (at most 100 replays)
TOLERANCE = 5e-3  # relative L2 against the stage kernel (same products, other summation order)


def tile_configs(tma: tma_conv.TmaStage) -> list[TmaConfig]:
    """The grid: 128-pixel tiles; 64/128/256 columns; K steps of 64; 3 or 4 stages; 4 or 8
    warps; persistent, tile and K loops fused; plus unfused loops, 2 programs per SM where two
    fit (shared memory, registers), K steps of 32, and for wider windows BOX tiles of 8x16 and
    16x8 pixels."""
    configs = [
        TmaConfig(128, n, 64, warps, stages)
        for n in (64, 128, 256) for stages in (3, 4) for warps in (4, 8)
        # a 128x256 fp32 accumulator in 128 threads spills; 4 stages of 128x256 tiles with the
        # epilogue's buffer exceed the shared memory of an SM
        if not (n == 256 and (warps == 4 or stages == 4))
    ]
    configs += [
        TmaConfig(128, 128, 64, 8, 4, flatten=0), TmaConfig(128, 256, 64, 8, 3, flatten=0),
        TmaConfig(128, 64, 64, 4, 3, per_sm=2), TmaConfig(128, 64, 64, 8, 3, per_sm=2),
        TmaConfig(128, 128, 32, 4, 4, per_sm=2),
        TmaConfig(128, 128, 32, 8, 4),
    ]
    if tma.has_taps:
        configs += [
            TmaConfig(128, n, 64, warps, stages, box_w=box_w)
            for box_w in (16, 8) for n, warps, stages in ((128, 8, 4), (256, 8, 3), (64, 4, 4))
        ]
        # 64-pixel tiles: FLAT tiles stay inside one image, so a 17x17 map wastes 25% of
        # 128-pixel tiles (10% of 64) and an 8x8 map half (none)
        configs += [TmaConfig(64, 128, 64, 4, 4), TmaConfig(64, 256, 64, 4, 3),
                    TmaConfig(64, 128, 64, 4, 3, per_sm=2), TmaConfig(64, 128, 64, 4, 4, box_w=8)]
        # ROWS tiles: across images, every off-centre tap masked
        configs += [TmaConfig(128, n, 64, warps, stages, rows=1)
                    for n, warps, stages in ((128, 8, 4), (256, 8, 3), (64, 4, 4), (128, 8, 3))]
    return configs


# --- Compiling ahead, in parallel --------------------------------------------------------


def _warm(tasks: list) -> list:
    """Compile kernel variants into Triton's on-disk cache (a worker process): ("tma", config,
    flags) for the TMA kernel, ("stage", config, kinds, wide, split) for the stage kernel.
    Pointer arguments as dtypes (Triton's MockTensor: 16-byte aligned, as real buffers are),
    shape arguments unspecialized: the cache keys of the timed launches."""
    import torch as _torch

    from inception_fast.kernels.triton.stage_kernel import _stage_kernel

    _torch.cuda.init()
    dt, f32, i32, i64 = _torch.float16, _torch.float32, _torch.int32, _torch.int64
    errors = []
    for task in tasks:
        try:
            if task[0] == "tma":
                config, (has_gemm, has_taps, tap_mask, has_residual) = TmaConfig(*task[1]), task[2]
                _tma_stage_kernel.warmup(
                    dt, dt, dt, dt, f32, i32, i32, i64, 8, 8, 8, 8, 8, 8, 1, grid=(1,),
                    BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                    BOX_W=config.box_w, INPUT_PRECISION="ieee", HAS_GEMM=has_gemm, HAS_TAPS=has_taps,
                    TAP_MASK=tap_mask, HAS_RESIDUAL=has_residual, WIDE_INDEX=False,
                    FLATTEN=bool(config.flatten), ROWS=bool(config.rows), num_warps=config.num_warps,
                    num_stages=config.num_stages,
                )
            else:
                (bm, bn, bk, warps, stages, _), (has_conv, has_pool, has_residual), wide, split = task[1:]
                _stage_kernel.warmup(
                    dt, dt, dt, dt, f32, i32, i32, i64, f32, i32, 8, 8, 8, 8, 8, 8, 1, 1, grid=(1,),
                    BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INPUT_PRECISION="ieee", HAS_CONV=has_conv,
                    HAS_POOL=has_pool, HAS_RESIDUAL=has_residual, WIDE_INDEX=wide, SPLIT_K=split,
                    num_warps=warps, num_stages=stages,
                )
        except Exception as err:  # noqa: BLE001 - reported; the timed run compiles it again
            errors.append(f"{task}: {type(err).__name__}: {str(err)[:200]}")
    return errors


def precompile(variants: set, workers: int) -> dict:
    start = time.perf_counter()
    tasks = sorted(variants, key=repr)
    chunks = [tasks[i::workers] for i in range(workers) if tasks[i::workers]]
    errors = []
    try:
        with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
            for found in pool.map(_warm, chunks):
                errors += found
    except Exception as err:  # noqa: BLE001 - compiling lazily instead still works
        errors.append(f"pool failed: {type(err).__name__}: {err}")
    return {"variants": len(tasks), "workers": len(chunks), "seconds": time.perf_counter() - start,
            "errors": errors}


# --- The network's stages ----------------------------------------------------------------


def network_stages(network: str, device) -> list[dict]:
    """Every stage of every distinct block (by structure and input size), with how often the
    network runs it."""
    torch.manual_seed(0)
    model = randomize_batchnorm(architectures.create(network)).eval()
    compiled = compile_model(model)
    height = width = architectures.default_cfg(model).get("input_size", (3, 299, 299))[1]
    blocks: dict = {}
    for step in compiled.steps:
        if not isinstance(step, CompiledBlock):
            raise SystemExit(f"{network}: a PyTorch step between blocks; this benchmark needs blocks only")
        fused = FusedBlock.from_compiled(step).to(device=device, dtype=DTYPE)
        key = (repr(fused.plan.stages), fused.plan.in_channels, height, width)
        if key in blocks:
            blocks[key]["count"] += 1
        else:
            blocks[key] = {"block": fused, "height": height, "width": width, "count": 1}
        height, width = fused.output_hw(height, width)
    stages = []
    for entry in blocks.values():
        block, h, w = entry["block"], entry["height"], entry["width"]
        probe = torch.empty((1, block.plan.in_channels, h, w), device=device, dtype=DTYPE)
        for index, (stage, signature, state) in enumerate(triton_backend._packed_block(block, probe)):
            stages.append({
                "name": f"{block.plan.path}.s{index} {block.plan.label.split(' (')[0]}",
                "path": block.plan.path, "block": block, "stage": stage, "signature": signature,
                "state": state,
                "height": h, "width": w, "count": entry["count"],
                "tma": tma_conv.plan_stage(stage, allow_split=True),
            })
    return stages


def stage_kernel_variants(stages: list[dict], batches: list[int], device) -> set:
    """The stage kernel's variants the timed run launches: each stage and each rest of a split
    stage, at each batch, with the config the backend picks (chosen here, kept in the stage's
    launch state)."""
    variants = set()
    for entry in stages:
        parts = [(entry["stage"], entry["state"], entry["signature"])]
        tma = entry["tma"]
        if tma is not None and tma.rest is not None:
            parts.append((tma.rest, tma.rest_state, tma.rest_signature))
        for batch in batches:
            shapes = buffer_shapes(entry, batch)
            x = torch.empty((), device=device, dtype=DTYPE).expand(shapes[0])  # no memory: shape only
            wide = max(math.prod(shape) for shape in shapes) >= 2**31
            for part, state, signature in parts:
                config = tuple(triton_backend.stage_config(part, state, x, signature, launch=None))
                variants.add(("stage", config, stage_kinds(part), wide, config[5] > 1))
    return variants


def buffer_shapes(entry: dict, batch: int) -> list[tuple]:
    """(input, work, output) shapes of a stage's block, as the backend allocates them."""
    plan, h, w = entry["block"].plan, entry["height"], entry["width"]
    oh, ow = entry["block"].output_hw(h, w)
    return [
        (batch, triton_backend._aligned(plan.in_channels), h, w),
        (batch, max(plan.work_channels, 8), h, w),
        (batch, plan.out_channels, oh, ow),
    ]


def buffers(entry: dict, batch: int, device):
    """Random ReLU'd input, work and output buffers of a stage's block (channels_last)."""
    return [
        torch.rand(shape, device=device, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
        for shape in buffer_shapes(entry, batch)
    ]


def graph_time(launch) -> float:
    """Median ms of one launch, replayed from a CUDA graph, L2 flushed before each replay."""
    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    return timing.time_cuda(
        lambda i: graph.replay(), budget_ms=BUDGET_MS, warmup_ms=3.0, max_reps=100
    ).median_ms


def conv_shapes(stage: pk.PackedStage, rows, h: int, w: int) -> list[ConvShape]:
    return [
        ConvShape(r[pk.CIN], r[pk.COLS], h, w, (r[pk.KH], r[pk.KW]), (r[pk.STRIDE],) * 2,
                  (r[pk.PAD_H], r[pk.PAD_W]), (1, 1), 1, False)
        for r in rows if r[pk.KIND] == pk.CONV
    ]


class CudnnTimes:
    """cuDNN times per conv shape and batch, each measured once."""

    def __init__(self, device):
        self.device, self.seen = device, {}

    def __call__(self, shapes, batch: int) -> float:
        total = 0.0
        for shape in shapes:
            if (shape, batch) not in self.seen:
                with conv_floor.cudnn_benchmark(True):
                    t = conv_floor.time_conv(shape, batch, DTYPE, self.device, BUDGET_MS)
                self.seen[(shape, batch)] = t.median_ms
            total += self.seen[(shape, batch)]
        return total


def measure_stage(entry: dict, batch: int, device, cudnn: CudnnTimes, deadline: float) -> dict:
    stage, state, tma = entry["stage"], entry["state"], entry["tma"]
    h, w = entry["height"], entry["width"]
    x, work, out = buffers(entry, batch, device)

    def stage_kernel(part, state, signature, work=work, out=out):
        triton_backend._run_stage(part, state, x, work, out, signature)

    result = {
        "stage": entry["name"], "path": entry["path"], "signature": entry["signature"],
        "count": entry["count"],
        "stage_kernel_ms": graph_time(lambda: stage_kernel(stage, state, entry["signature"])),
        "stage_kernel_config": list(state.configs.get((batch, h, w, DTYPE, False), [])),
        "cudnn_all_convs_ms": cudnn(conv_shapes(stage, stage.rows, h, w), batch),
    }
    if tma is None:
        return result
    expected_work, expected_out = work.clone(), out.clone()
    stage_kernel(stage, state, entry["signature"], expected_work, expected_out)
    result["tma_rows"] = len(tma.rows)
    result["rest_rows"] = len(tma.rest.rows) if tma.rest is not None else 0
    result["cudnn_tma_convs_ms"] = cudnn(conv_shapes(stage, tma.rows, h, w), batch)
    result["rest_ms"] = 0.0
    if tma.rest is not None:
        result["rest_ms"] = graph_time(lambda: stage_kernel(tma.rest, tma.rest_state, tma.rest_signature))
    runs = []
    configs = tile_configs(tma)
    default = tma_conv.default_config(tma, x.element_size())
    if default not in configs:
        configs.insert(0, default)
    for config in configs:
        run = {"config": list(config), "label": config.label(), "default": config == default,
               "computed_fraction": tma_conv.computed_fraction(tma.rows, batch, h, w, config)}
        runs.append(run)
        if time.perf_counter() > deadline and config != default:
            run["skipped"] = "deadline"
            continue
        try:
            got_work, got_out = work.clone(), out.clone()
            launch_tma_stage(_tma_stage_kernel, tma, x, got_work, got_out, config, "ieee")
            if tma.rest is not None:
                stage_kernel(tma.rest, tma.rest_state, tma.rest_signature, got_work, got_out)
            torch.cuda.synchronize()
            error = max(relative_l2(got_out, expected_out), relative_l2(got_work, expected_work))
            run["rel_err"] = error
            if not error < TOLERANCE:
                run["error"] = f"disagrees with the stage kernel: relative L2 {error:.3g}"
                continue
            run["ms"] = graph_time(
                lambda c=config: launch_tma_stage(_tma_stage_kernel, tma, x, work, out, c, "ieee")
            )
        except Exception as err:  # noqa: BLE001 - e.g. a tile that needs more shared memory than the SM has
            run["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    result["tma"] = runs
    timed = [r for r in runs if "ms" in r]
    if timed:
        best = min(timed, key=lambda r: r["ms"])
        result["tma_best_ms"], result["tma_best"] = best["ms"], best["label"]
        result["tma_plus_rest_ms"] = best["ms"] + result["rest_ms"]
        result["tma_default_ms"] = next((r["ms"] for r in timed if r["default"]), None)
    return result


def _cell(value, width=9) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"


def print_table(batch: int, rows: list[dict]) -> dict:
    print(f"\n== batch {batch}, fp16: ms per stage launch (x = times the network runs it) ==")
    head = (f"{'stage':<30}{'x':>3} {'signature':<44}{'stage k.':>9}{'tma+rest':>9}{'tma':>8}{'rest':>7}"
            f"{'cuDNN tma':>10}{'cuDNN all':>10}  best TMA config / default")
    print(head)
    totals = dict.fromkeys(("stage_kernel_ms", "best_ms", "cudnn_all_convs_ms", "tma_stages_stage_kernel_ms",
                            "tma_stages_best_ms", "tma_stages_cudnn_ms"), 0.0)
    for r in rows:
        stage_ms, count = r["stage_kernel_ms"], r["count"]
        tma_total = r.get("tma_plus_rest_ms")
        best = min(stage_ms, tma_total) if tma_total is not None else stage_ms
        totals["stage_kernel_ms"] += count * stage_ms
        totals["best_ms"] += count * best
        totals["cudnn_all_convs_ms"] += count * r["cudnn_all_convs_ms"]
        if "tma_rows" in r:
            totals["tma_stages_stage_kernel_ms"] += count * stage_ms
            totals["tma_stages_best_ms"] += count * best
            totals["tma_stages_cudnn_ms"] += count * r["cudnn_all_convs_ms"]

        errors = sum("error" in t for t in r.get("tma", []))
        note = ""
        if "tma_rows" in r:
            failed = f", {errors} configs failed" if errors else ""
            note = (f"{r.get('tma_best', 'none timed')} / default {_cell(r.get('tma_default_ms'), 7).strip()}"
                    f" ({r['tma_rows']} tma + {r['rest_rows']} rest rows{failed})")
        print(f"{r['stage'][:30]:<30}{count:>3} {r['signature'][:43]:<44}{_cell(stage_ms)}{_cell(tma_total)}"
              f"{_cell(r.get('tma_best_ms'), 8)}{_cell(r.get('rest_ms'), 7)}"
              f"{_cell(r.get('cudnn_tma_convs_ms'), 10)}{_cell(r['cudnn_all_convs_ms'], 10)}  {note}")
    print(f"network, all stages on the stage kernel: {totals['stage_kernel_ms']:.3f} ms; best of stage "
          f"kernel and TMA per stage: {totals['best_ms']:.3f} ms; cuDNN convs alone: "
          f"{totals['cudnn_all_convs_ms']:.3f} ms")
    print(f"  stages with TMA rows only: stage kernel {totals['tma_stages_stage_kernel_ms']:.3f} ms, best "
          f"{totals['tma_stages_best_ms']:.3f} ms, cuDNN {totals['tma_stages_cudnn_ms']:.3f} ms")
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="JSON results file")
    parser.add_argument("--batches", default="256,32")
    parser.add_argument("--network", default="inception_v4", choices=sorted(architectures.MODELS))
    parser.add_argument("--workers", type=int, default=12, help="processes compiling tile configs ahead")
    parser.add_argument("--deadline-s", type=float, default=200.0,
                        help="after this many seconds only default TMA configs are timed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not torch.cuda.is_available():
        print("tma_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    if tuning.enabled():
        print("tma_bench: unset INCEPTION_FAST_AUTOTUNE; the stage kernel runs the configs a first "
              "call gets (cached, shipped or heuristic)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    stages = network_stages(args.network, device)
    tma_count = sum(s["tma"] is not None for s in stages)
    print(f"{args.network}: {len(stages)} distinct stages, {tma_count} with stride-1 convs for the TMA "
          "kernel")
    batches = [int(b) for b in args.batches.split(",")]
    variants = {
        ("tma", tuple(config), s["tma"].kernel_flags(config))
        for s in stages if s["tma"] is not None for config in tile_configs(s["tma"])
    }
    variants |= stage_kernel_variants(stages, batches, device)
    compiled = precompile(variants, args.workers)
    print(f"compiled {compiled['variants']} TMA kernel variants in {compiled['seconds']:.1f} s "
          f"on {compiled['workers']} processes ({len(compiled['errors'])} errors)")
    for error in compiled["errors"][:10]:
        print("  ", error)
    deadline = start + args.deadline_s
    cudnn = CudnnTimes(device)
    results = {"network": args.network, "dtype": "fp16", "environment": bench.environment(device),
               "compile": compiled, "batches": {}}
    with torch.inference_mode():
        for batch in batches:
            rows = []
            for entry in stages:
                rows.append(measure_stage(entry, batch, device, cudnn, deadline))
                torch.cuda.empty_cache()
            totals = print_table(batch, rows)
            results["batches"][str(batch)] = {"stages": rows, "network": totals}
    results["elapsed_s"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out} ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
