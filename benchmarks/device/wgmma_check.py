"""The CUTLASS sm90 1x1-conv GEMM (`torch.ops.inception_fast.cuda_gemm_conv1x1`) on a Hopper GPU:
correctness, then times against the project's stage kernels, cuDNN and cuBLAS. Run through
wgmma_check.sh (it installs the CUTLASS headers and builds the extension first), or, where both
are present:

    python benchmarks/device/wgmma_check.py [--skip-timing]

1. Correctness: Inception-v4's 1x1 problems (K=384 at 35x35, K=1024 at 17x17, K=1536 at 8x8,
   each branch's N and the branches stacked into one GEMM) at odd pixel counts (batch 1, 3, 32),
   fp16 and bf16, ReLU on and off, written at channel offset 0 and into a slice in the middle of
   a wider output, with the tile chosen per problem and with each tile forced. Against a float64
   reference, our relative L2 error must be at most twice cuDNN's own (F.conv2d in the same
   dtype, channels_last) plus 1e-6, and the output's other channels must keep their sentinel.
2. Timing (fp16, batch 32 and 256): medians of CUDA-event timings with the L2 flushed before
   every call (`inception_fast.timing`), inputs rotating over two sets. Ours includes the bias,
   the ReLU and the store into a channel slice, and so do the project's own kernels on the same
   problem as a one-conv stage: the Triton stage kernel (best of three tile configs) and the
   CUDA stage kernel (mma.sync, the `cuda` backend's). cuDNN is F.conv2d without bias
   (channels_last, cudnn.benchmark) and cuBLAS is torch.mm on the same [M, K] x [K, N] without
   bias: both do less work than ours.

Writes a markdown table and JSON to $OUT/wgmma_check.md / .json when OUT is set; exits non-zero
when any correctness case fails (every case still runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F

from inception_fast import extension, timing
from inception_fast import packing as pk

# (K, map size, the N of each 1x1 GEMM): each branch's 1x1 conv on the block input, then the
# block's 1x1 branches stacked into one GEMM, as the backends pack them.
PROBLEMS = [
    (384, 35, (96, 64, 224)),  # Inception-A: 96, 64, 64 (+ 96 stacked)
    (1024, 17, (384, 192, 768)),  # Inception-B: 384, 192, 192 stacked
    (1536, 8, (256, 384, 1024)),  # Inception-C: 256, 384, 384 stacked
]
CHECK_BATCHES = (1, 3, 32)
TIME_BATCHES = (32, 256)
TILES = (0, 64, 128, 256)  # 0: the op's own choice
# The Triton stage kernel's (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, k_parts) tried per problem.
TRITON_CONFIGS = ((128, 64, 64, 4, 4, 1), (128, 128, 64, 8, 3, 1), (128, 256, 64, 8, 3, 1))
DEVICE = "cuda"
SENTINEL = 1234.0
FLOOR = 1e-6


def rel_l2(result: torch.Tensor, reference: torch.Tensor) -> float:
    return ((result.double() - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def gemm_conv1x1(x, weight, bias, out, col_offset, relu, tile_n=0):
    torch.ops.inception_fast.cuda_gemm_conv1x1(x, weight, bias, out, col_offset, relu, tile_n)


def make_problem(batch, size, k, n, dtype, seed):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(batch, size, size, k, device=DEVICE, generator=generator).relu_().to(dtype)
    weight = (torch.randn(n, k, device=DEVICE, generator=generator) / k**0.5).to(dtype)
    bias = torch.randn(n, device=DEVICE, generator=generator) * 0.1
    return x, weight, bias


def check_case(x, weight, bias, reference, cudnn_error, relu, col_offset, extra, tile) -> dict:
    """One call of the op into a sentinel-filled output, judged against the float64 reference."""
    batch, size, _, k = x.shape
    m, n = x.numel() // k, weight.shape[0]
    channels = col_offset + n + extra
    out = torch.full((batch, size, size, channels), SENTINEL, device=DEVICE, dtype=x.dtype)
    error, untouched, message = float("nan"), False, ""
    try:
        gemm_conv1x1(x, weight, bias, out, col_offset, relu, tile)
        torch.cuda.synchronize()
        flat = out.reshape(m, channels)
        error = rel_l2(flat[:, col_offset:col_offset + n], reference)
        outside = torch.cat([flat[:, :col_offset], flat[:, col_offset + n:]], dim=1)
        untouched = bool((outside == SENTINEL).all())
    except RuntimeError as err:
        message = str(err).splitlines()[0][:200]
    ok = untouched and error <= 2 * cudnn_error + FLOOR
    row = {
        "k": k, "n": n, "batch": batch, "size": size, "m": m, "dtype": str(x.dtype).removeprefix("torch."),
        "relu": relu, "col_offset": col_offset, "channels": channels, "tile_n": tile, "error": error,
        "cudnn_error": cudnn_error, "untouched": untouched, "ok": ok, "message": message,
    }
    if not ok:
        print(f"FAIL k={k} n={n} batch={batch} {row['dtype']} relu={relu} col_offset={col_offset} "
              f"tile={tile}: error {error:.3e} vs cuDNN {cudnn_error:.3e}, untouched {untouched} {message}",
              flush=True)
    return row


def check_correctness() -> tuple[list[dict], int]:
    rows = []
    seed = 0
    for k, size, widths in PROBLEMS:
        for n in widths:
            for batch in CHECK_BATCHES:
                for dtype in (torch.float16, torch.bfloat16):
                    seed += 1
                    x, weight, bias = make_problem(batch, size, k, n, dtype, seed)
                    m = x.numel() // k
                    exact = x.reshape(m, k).double() @ weight.double().T + bias.double()
                    # cuDNN in the same dtype (its bias in that dtype too: F.conv2d needs one dtype).
                    x_nchw = x.permute(0, 3, 1, 2)  # channels_last NCHW view of the NHWC buffer
                    cudnn = F.conv2d(x_nchw, weight.reshape(n, k, 1, 1), bias.to(dtype))
                    cudnn = cudnn.permute(0, 2, 3, 1).reshape(m, n)
                    for relu in (False, True):
                        reference = exact.relu() if relu else exact
                        cudnn_error = rel_l2(cudnn.relu() if relu else cudnn, reference)
                        for col_offset, extra in ((0, 0), (40, 24)):
                            for tile in TILES:
                                rows.append(check_case(x, weight, bias, reference, cudnn_error, relu,
                                                       col_offset, extra, tile))
    return rows, sum(not row["ok"] for row in rows)


def check_argument_errors() -> int:
    """A bad argument raises, naming it (no launch happens)."""
    failures = 0
    x, weight, bias = make_problem(2, 8, 64, 32, torch.float16, 0)
    out = torch.zeros(2, 8, 8, 64, device=DEVICE, dtype=torch.float16)
    cases = [
        ("col_offset", lambda: gemm_conv1x1(x, weight, bias, out, 4, False)),
        ("col_offset", lambda: gemm_conv1x1(x, weight, bias, out, 40, False)),
        ("bias", lambda: gemm_conv1x1(x, weight, bias.half(), out, 0, False)),
        ("weight", lambda: gemm_conv1x1(x, weight.bfloat16(), bias, out, 0, False)),
        ("out", lambda: gemm_conv1x1(x, weight, bias, out[:1], 0, False)),
        ("tile_n", lambda: gemm_conv1x1(x, weight, bias, out, 0, False, 96)),
    ]
    for name, call in cases:
        try:
            call()
            print(f"FAIL: a bad {name} was accepted")
            failures += 1
        except RuntimeError as err:
            if name not in str(err):
                print(f"FAIL: a bad {name} raised without naming it: {err}")
                failures += 1
    return failures


def one_conv_stage(weight, bias, col_offset):
    """The 1x1 conv as the project's packed stage format: one problem writing channels
    [col_offset, col_offset + N) of the output, with ReLU."""
    n, k = weight.shape
    row = [0] * pk.NUM_FIELDS
    row[pk.KIND], row[pk.SRC_BUF], row[pk.CIN], row[pk.COLS] = pk.CONV, pk.BUF_INPUT, k, n
    row[pk.KH] = row[pk.KW] = row[pk.STRIDE] = 1
    dsts = list(range(col_offset, col_offset + n))
    flags = [pk.FLAG_RELU | pk.FLAG_TO_OUTPUT] * n
    return pk.make_stage([row], [weight.reshape(-1)], [bias], dsts, flags, DEVICE, weight.dtype,
                         in_channels=k)


def time_project_kernels(row, sets, out, col_offset, median_ms) -> None:
    """The Triton and CUDA stage kernels on the same GEMM (bias, ReLU, channel slice), each
    checked against our op's result first; NaN where one fails or disagrees."""
    from inception_fast.kernels.triton.stage_kernel import _stage_kernel
    from inception_fast.kernels.triton.stage_launch import launch_stage_tensors, stage_tiles

    stages = [one_conv_stage(w, b, col_offset) for _, w, b in sets]
    batch, size = out.shape[0], out.shape[1]
    n = sets[0][1].shape[0]
    gemm_conv1x1(*sets[0], out, col_offset, True)
    expected = out[..., col_offset:col_offset + n].clone()
    work = torch.empty((1, 8, 1, 1), dtype=out.dtype, device=DEVICE, memory_format=torch.channels_last)

    def triton_call(i, config):
        stage = stages[i % 2]
        tiles = stage_tiles(stage, batch, size, size, config[0], config[1], config[5])
        x_nchw, out_nchw = sets[i % 2][0].permute(0, 3, 1, 2), out.permute(0, 3, 1, 2)
        launch_stage_tensors(_stage_kernel, tiles, x_nchw, work, out_nchw, stage.problems, stage.weights,
                             stage.bias, stage.col_dst, stage.col_flags, config, "ieee", True, False, False)

    def cuda_stage_call(i):
        stage = stages[i % 2]
        torch.ops.inception_fast.cuda_conv_stage(sets[i % 2][0], out.new_empty(0), out, stage.rows[0],
                                                 stage.weights, stage.bias, stage.col_dst, stage.col_flags)

    candidates = {f"triton_{c[0]}x{c[1]}x{c[2]}w{c[3]}s{c[4]}": (lambda i, c=c: triton_call(i, c))
                  for c in TRITON_CONFIGS}
    candidates["cuda_stage"] = cuda_stage_call
    for name, call in candidates.items():
        try:
            out.zero_()
            call(0)
            torch.cuda.synchronize()
            error = rel_l2(out[..., col_offset:col_offset + n], expected.double())
            row[f"{name}_ms"] = median_ms(call) if error < 1e-2 else float("nan")
            if error >= 1e-2:
                print(f"{name}: differs from our op by {error:.2e}; not timed", flush=True)
        except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            print(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            row[f"{name}_ms"] = float("nan")
    triton_times = {name: row[f"{name}_ms"] for name in candidates if name.startswith("triton")}
    best = min(triton_times, key=lambda name: (triton_times[name] != triton_times[name], triton_times[name]))
    row["triton_config"] = best
    row["triton_ms"] = triton_times[best]


def time_problem(batch: int, k: int, size: int, n: int) -> dict:
    sets = [make_problem(batch, size, k, n, torch.float16, seed) for seed in (1, 2)]
    m = sets[0][0].numel() // k
    channels = n + 64  # a slice of a wider output, as a block writes its concat
    out = torch.empty(batch, size, size, channels, device=DEVICE, dtype=torch.float16)
    flops = 2.0 * m * n * k
    row = {"batch": batch, "size": size, "m": m, "k": k, "n": n, "gflop": flops / 1e9}

    def median_ms(fn) -> float:
        return timing.time_cuda(fn, budget_ms=80, warmup_ms=20, max_reps=200).median_ms

    for tile in TILES:
        row[f"ours_t{tile}_ms"] = median_ms(
            lambda i, tile=tile: gemm_conv1x1(*sets[i % 2], out, 32, True, tile))
    time_project_kernels(row, sets, out, 32, median_ms)
    nchw = [(x.permute(0, 3, 1, 2), w.reshape(n, k, 1, 1)) for x, w, _ in sets]
    F.conv2d(*nchw[0])  # cuDNN's algorithm search, outside the timed calls
    row["cudnn_ms"] = median_ms(lambda i: F.conv2d(*nchw[i % 2]))
    mats = [(x.reshape(m, k), w.T) for x, w, _ in sets]
    row["cublas_ms"] = median_ms(lambda i: torch.mm(*mats[i % 2]))
    best_tile = min((t for t in TILES if t), key=lambda t: row[f"ours_t{t}_ms"])
    row["best_tile"] = best_tile
    for name in ("ours_t0", f"ours_t{best_tile}", "triton", "cuda_stage", "cudnn", "cublas"):
        row[f"{name}_tflops"] = flops / (row[f"{name}_ms"] * 1e-3) / 1e12
    return row


def time_ops() -> list[dict]:
    rows = []
    torch.backends.cudnn.benchmark = True
    for batch in TIME_BATCHES:
        for k, size, widths in PROBLEMS:
            for n in widths:
                row = time_problem(batch, k, size, n)
                rows.append(row)
                best = row["best_tile"]
                print(f"batch {batch:>3} K={k:>4} N={n:>4} M={row['m']:>6}: ours {row['ours_t0_ms']:.4f} ms "
                      f"(best tile {best}: {row[f'ours_t{best}_ms']:.4f}), triton {row['triton_ms']:.4f} "
                      f"({row['triton_config']}), cuda stage {row['cuda_stage_ms']:.4f}, "
                      f"cuDNN {row['cudnn_ms']:.4f}, cuBLAS {row['cublas_ms']:.4f}", flush=True)
                torch.cuda.empty_cache()
    return rows


def markdown(check_rows, failures, time_rows, header) -> str:
    lines = [f"# cuda_gemm_conv1x1 (CUTLASS sm90) check\n\n{header}\n", "## Correctness\n"]
    lines.append("Relative L2 error against float64; max over relu on/off, both offsets and all tiles "
                 "(2x rule: ours <= 2 x cuDNN + 1e-6; other channels untouched).\n")
    lines.append("| K | N | batch | map | dtype | max error (ours) | cuDNN error | cases | failed |")
    lines.append("|---:|---:|---:|---:|:---|---:|---:|---:|---:|")
    groups: dict = {}
    for row in check_rows:
        groups.setdefault((row["k"], row["n"], row["batch"], row["size"], row["dtype"]), []).append(row)
    for (k, n, batch, size, dtype), rows in groups.items():
        worst = max(r["error"] for r in rows)
        cudnn = max(r["cudnn_error"] for r in rows)
        failed = sum(not r["ok"] for r in rows)
        lines.append(f"| {k} | {n} | {batch} | {size}x{size} | {dtype} | {worst:.3e} | {cudnn:.3e} | "
                     f"{len(rows)} | {failed} |")
    lines.append(f"\n{failures} failed correctness or argument checks.\n")
    if time_rows:
        lines.append("## Timing (fp16, ms, median, L2 flushed before each call)\n")
        lines.append("ours = bias + ReLU + store into a channel slice, tile chosen by the op (t64/t128/t256: "
                     "forced); triton / cuda stage = the project's stage kernels on the same one-conv "
                     "stage (same work; triton: best of its configs); cuDNN = F.conv2d without bias, "
                     "channels_last; cuBLAS = torch.mm without bias. x/ours > 1: ours is faster.\n")
        lines.append("| batch | map | M | K | N | ours | t64 | t128 | t256 | triton | cuda stage | cuDNN | "
                     "cuBLAS | ours TFLOP/s | triton TFLOP/s | cuBLAS TFLOP/s | triton/ours | cuDNN/ours | "
                     "cuBLAS/ours |")
        lines.append("|" + "---:|" * 19)
        for r in time_rows:
            lines.append(
                f"| {r['batch']} | {r['size']}x{r['size']} | {r['m']} | {r['k']} | {r['n']} | "
                f"{r['ours_t0_ms']:.4f} | {r['ours_t64_ms']:.4f} | {r['ours_t128_ms']:.4f} | "
                f"{r['ours_t256_ms']:.4f} | {r['triton_ms']:.4f} | {r['cuda_stage_ms']:.4f} | "
                f"{r['cudnn_ms']:.4f} | {r['cublas_ms']:.4f} | {r['ours_t0_tflops']:.0f} | "
                f"{r['triton_tflops']:.0f} | {r['cublas_tflops']:.0f} | "
                f"{r['triton_ms'] / r['ours_t0_ms']:.2f} | "
                f"{r['cudnn_ms'] / r['ours_t0_ms']:.2f} | {r['cublas_ms'] / r['ours_t0_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    extension.load()
    print(f"extension ready in {time.perf_counter() - start:.0f} s", flush=True)
    header = (f"{torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
              f"cuDNN {torch.backends.cudnn.version()} | CUTLASS {extension.cutlass_version()}")
    print(header, flush=True)

    start = time.perf_counter()
    check_rows, failures = check_correctness()
    failures += check_argument_errors()
    seconds = time.perf_counter() - start
    print(f"correctness: {len(check_rows)} cases, {failures} failures, {seconds:.0f} s", flush=True)
    time_rows = []
    if not args.skip_timing:
        start = time.perf_counter()
        time_rows = time_ops()
        print(f"timing: {time.perf_counter() - start:.0f} s", flush=True)
    report = markdown(check_rows, failures, time_rows, header)
    print(report)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "wgmma_check.md").write_text(report)
        payload = {"header": header, "failures": failures, "correctness": check_rows, "timing": time_rows}
        (Path(out_dir) / "wgmma_check.json").write_text(json.dumps(payload, indent=1))
    print("wgmma_check: ALL PASSED" if failures == 0 else f"wgmma_check: {failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
