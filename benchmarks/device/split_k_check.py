"""Split-K in the CUTLASS ops (`cuda_conv_fprop`, `cuda_gemm_conv1x1`: split_k): correctness, the
time of each split count on Inception-v4's convs at small batches, and the whole network with it
on and off.

    python benchmarks/device/split_k_check.py [--batches 1,2,4] [--model-batches 1,2,4,8]

- Each case (fp16, and bf16 on the first few) runs each split count that fits one wave on this
  GPU against float64 on a
  channel slice of a wider buffer (conv_fprop_check.case_tensors), within twice cuDNN's own error
  plus 1e-6, twice with the same bits (the partials meet in split order); a case that fails is
  reported and not timed.
- Timed as the network runs them: 20 launches back to back in a CUDA graph, the inputs warm in
  L2 (at these batches a block's activations fit in it), the median replay over 20; `model` is
  the count the backends ask for (gemm_routing.split_k_count on every SM). cuDNN is timed the
  same way (F.conv2d, channels_last, cudnn.benchmark, with the bias).
- The locks that every kernel leaves at zero: convs of different sizes and split counts, 200
  launches in turn on one stream, then on a second stream, each result checked.
- The network: `optimize(model, dtype)` with INCEPTION_FAST_CUTLASS_SPLIT_K=off and auto (two
  models, planned under each), their CUDA-graph calls timed in alternating rounds.
Writes $OUT/split_k_check.md and .json when OUT is set; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from conv_fprop_check import case_tensors, slice_layout

from inception_fast import extension, timing
from inception_fast.backends import gemm_routing
from inception_fast.testing import relative_l2

# (name, height, width, in, out, (r, s), stride, (pad_h, pad_w)): Inception-v4's k x k convs
# past the stem, at the sizes where small batches leave SMs idle.
CASES = [
    ("InceptionA 3x3 64-96", 35, 35, 64, 96, (3, 3), 1, (1, 1)),
    ("InceptionA 3x3 96-96", 35, 35, 96, 96, (3, 3), 1, (1, 1)),
    ("ReductionA 3x3/2 384", 35, 35, 384, 384, (3, 3), 2, (0, 0)),
    ("ReductionA 3x3 192-224", 35, 35, 192, 224, (3, 3), 1, (1, 1)),
    ("ReductionA 3x3/2 224-256", 35, 35, 224, 256, (3, 3), 2, (0, 0)),
    ("InceptionB 1x7 192-224", 17, 17, 192, 224, (1, 7), 1, (0, 3)),
    ("InceptionB 7x1 224-256", 17, 17, 224, 256, (7, 1), 1, (3, 0)),
    ("InceptionB 7x1 192-192", 17, 17, 192, 192, (7, 1), 1, (3, 0)),
    ("ReductionB 3x3/2 192", 17, 17, 192, 192, (3, 3), 2, (0, 0)),
    ("ReductionB 3x3/2 320", 17, 17, 320, 320, (3, 3), 2, (0, 0)),
    ("InceptionC 1x3 384-256", 8, 8, 384, 256, (1, 3), 1, (0, 1)),
    ("InceptionC 3x1 384-448", 8, 8, 384, 448, (3, 1), 1, (1, 0)),
    ("InceptionC 1x3 448-512", 8, 8, 448, 512, (1, 3), 1, (0, 1)),
]
# (name, height = width, in, out): the network's 1x1 convs (the GEMM op) at these batches.
GEMM_CASES = [
    ("InceptionA 1x1 384-96", 35, 384, 96),
    ("InceptionB 1x1 1024-384", 17, 1024, 384),
    ("InceptionB 1x1 1024-192", 17, 1024, 192),
    ("InceptionC 1x1 1536-384", 8, 1536, 384),
    ("InceptionC 1x1 1536-256", 8, 1536, 256),
]
SPLITS = (1, 2, 3, 4, 6, 8)
BF16_CASES = 4


def _label(split_k: int) -> str:
    return f"split {split_k}"


def graph_ms(fn, launches: int = 20, replays: int = 20) -> float:
    """Median time of one launch of `fn`, from CUDA-graph replays of `launches` in a row."""
    graph, _ = timing.capture_graph(lambda: [fn() for _ in range(launches)], warmup=2)
    torch.cuda.synchronize()
    return statistics.median(timing.replay_ms(graph, replays)) / launches


def counts(m: int, n: int, k_blocks: int, model: int) -> list[int]:
    """The split counts a case runs: SPLITS and the model's, those that fit one wave of tiles times
    ranges on this GPU and no more ranges than k-blocks."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = -(-m // gemm_routing.SPLIT_K_TILE[0]) * -(-n // gemm_routing.SPLIT_K_TILE[1])
    return [s for s in sorted({*SPLITS, model}) if s == 1 or (s <= k_blocks and tiles * s <= sms)]


def run_case(op, name, batch, height, width, c, k, r, s, stride, pad_h, pad_w, dtype, timed) -> dict:
    x, weight, bias, out = case_tensors(batch, height, width, c, k, r, s, stride, pad_h, pad_w)
    x, weight, out = x.to(dtype), weight.to(dtype), out.to(dtype)
    in_c0, out_c0 = slice_layout(c, False)[0], slice_layout(k, False)[0]
    source = x[..., in_c0:in_c0 + c].permute(0, 3, 1, 2)
    kernel = weight.permute(0, 3, 1, 2)
    cudnn_in = source.contiguous(memory_format=torch.channels_last)
    conv = dict(stride=stride, padding=(pad_h, pad_w))
    exact = F.conv2d(source.double(), kernel.double(), bias.double(), **conv).relu()
    cudnn = F.conv2d(cudnn_in, kernel, bias.to(dtype), **conv).relu()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    m = exact.shape[0] * exact.shape[2] * exact.shape[3]
    model = gemm_routing.split_k_count(m, k, -(-c // 64) * r * s, sms)  # what the backends ask for
    row = {"case": name, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "ok": True,
           "bound": 2 * relative_l2(cudnn, exact) + 1e-6, "errors": {}, "ms": {}, "model": model}
    for split_k in counts(m, k, -(-c // 64) * r * s, model):
        def ours(split_k=split_k):
            op(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, True, 0, False, 0, 0, split_k)

        try:
            out.zero_()
            ours()
            first = out.clone()
            out.zero_()
            ours()
        except RuntimeError as err:
            return {**row, "ok": False, "failure": f"{_label(split_k)}: {str(err).splitlines()[0][:200]}"}
        error = relative_l2(out[..., out_c0:out_c0 + k].permute(0, 3, 1, 2), exact)
        row["errors"][_label(split_k)] = error
        if error > row["bound"] or not torch.equal(first, out):
            why = f"{error:.2e} > {row['bound']:.2e}" if error > row["bound"] else "two runs differ"
            return {**row, "ok": False, "failure": f"{_label(split_k)}: {why}"}
        if out[..., :out_c0].any() or out[..., out_c0 + k:].any():
            return {**row, "ok": False, "failure": f"{_label(split_k)}: wrote outside its channel slice"}
        if timed:
            row["ms"][_label(split_k)] = graph_ms(ours)
    if timed:
        row["ms"]["model"] = row["ms"][_label(model)]
        row["ms"]["cuDNN"] = graph_ms(lambda: F.conv2d(cudnn_in, kernel, bias.to(dtype), **conv))
    return row


def run_gemm_case(op, name, batch, size, k, n) -> dict:
    """A GEMM case of fp16, as run_case: each count checked, then timed beside cuDNN's 1x1 conv."""
    generator = torch.Generator(device="cuda").manual_seed(k + n)
    x = torch.randn(batch, size, size, k, device="cuda", generator=generator).half()
    weight = (torch.randn(n, k, device="cuda", generator=generator) / k**0.5).half()
    bias = torch.randn(n, device="cuda", generator=generator) * 0.1
    out = torch.zeros(batch, size, size, n + 16, device="cuda", dtype=torch.float16)
    m = batch * size * size
    exact = (x.reshape(m, k).double() @ weight.double().T + bias.double()).relu()
    nchw = x.permute(0, 3, 1, 2)
    cudnn = F.conv2d(nchw, weight.reshape(n, k, 1, 1), bias.half()).permute(0, 2, 3, 1).reshape(m, n).relu()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    model = gemm_routing.split_k_count(m, n, -(-k // 64), sms)
    row = {"case": name, "batch": batch, "dtype": "float16", "ok": True, "model": model,
           "bound": 2 * relative_l2(cudnn, exact) + 1e-6, "errors": {}, "ms": {}}
    for split_k in counts(m, n, -(-k // 64), model):
        def ours(split_k=split_k):
            op(x, weight, bias, out, 8, True, 0, False, 0, split_k)

        out.zero_()
        ours()
        error = relative_l2(out.reshape(m, n + 16)[:, 8:8 + n], exact)
        row["errors"][_label(split_k)] = error
        if error > row["bound"]:
            return {**row, "ok": False, "failure": f"{_label(split_k)}: {error:.2e} > {row['bound']:.2e}"}
        row["ms"][_label(split_k)] = graph_ms(ours)
    row["ms"]["model"] = row["ms"][_label(model)]
    cudnn_in = nchw.contiguous(memory_format=torch.channels_last)
    row["ms"]["cuDNN"] = graph_ms(lambda: F.conv2d(cudnn_in, weight.reshape(n, k, 1, 1), bias.half()))
    return row


def locks_stay_clear(op) -> str | None:
    """Convs of different sizes and split counts in turn on one stream, then another: each result
    as the unsplit kernel's within the bound (a lock left set would hang or corrupt the next)."""
    convs = []
    for index, case in enumerate(CASES[5:]):
        _, height, width, c, k, (r, s), stride, (pad_h, pad_w) = case
        x, weight, bias, out = case_tensors(1 + index % 3, height, width, c, k, r, s, stride, pad_h, pad_w)
        slices = (slice_layout(c, False)[0], slice_layout(k, False)[0])
        args = (*slices, stride, pad_h, pad_w, True, 0, False, 0, 0)
        op(x, weight, bias, out, *args, 1)
        convs.append((x, weight, bias, out, args, out.clone()))
    for stream in (torch.cuda.current_stream(), torch.cuda.Stream()):
        with torch.cuda.stream(stream):
            for launch in range(200):
                x, weight, bias, out, args, unsplit = convs[launch % len(convs)]
                out.zero_()
                op(x, weight, bias, out, *args, 2 + launch % 3)
                error = relative_l2(out.float(), unsplit.float())
                if error > 1e-2:
                    return f"launch {launch} on {stream}: {error:.2e} from the unsplit result"
        stream.synchronize()
    return None


def model_rows(batches, dtype) -> list[dict]:
    """The network's CUDA-graph call with split-K off and `auto` (setting_ab.compare: a model
    captured under each, alternating rounds)."""
    from setting_ab import compare

    return [compare(gemm_routing.ENV_SPLIT_K, ["off", "auto"], batch, 8, dtype) for batch in batches]


def planned_blocks(batch: int, dtype):
    """With split-K off, then `auto`: that setting's name and each block of Inception-v4 planned
    and warmed under it, with its input in one forward at `batch`. The setting stays in the
    environment until the next is yielded (the launches read it), so capture there."""
    from pool_configs import block_inputs

    import inception_fast
    from inception_fast import bench
    from inception_fast.testing import calibrated_inception_v4

    source = calibrated_inception_v4(0).cuda()
    x = bench.make_inputs(batch, 299, torch.float32, torch.device("cuda"), seed=0, sets=1)[0].to(dtype)
    try:
        for setting in ("off", "auto"):
            os.environ[gemm_routing.ENV_SPLIT_K] = setting
            with torch.inference_mode():
                fused = inception_fast.optimize(source, dtype=dtype, cuda_graph=False)
                for _ in range(3):
                    fused(x)
                inputs = block_inputs(fused, x)
            yield setting, inputs
    finally:
        os.environ.pop(gemm_routing.ENV_SPLIT_K, None)


def block_rows(batch: int, dtype) -> list[dict]:
    """Each block of the network alone from a CUDA graph (as benchmarks/device/block_accounting.py
    times them), planned with split-K off and on: where the network's difference comes from."""
    times: dict = {}
    for setting, inputs in planned_blocks(batch, dtype):
        for index, (block, x_in) in enumerate(inputs):
            with torch.inference_mode():
                graph = timing.CapturedGraph(block.run, x_in)
                ms = timing.time_graph(graph, [x_in], budget_ms=100).median_ms
            times.setdefault(index, {"label": block.plan.label})[setting] = ms
            del graph
    rows = list(times.values())
    for row in rows:
        print(f"block {row['label']:<28} off {row['off']:.4f} auto {row['auto']:.4f} ms "
              f"({row['auto'] / row['off']:.3f}x)", flush=True)
    total = {s: sum(row[s] for row in rows) for s in ("off", "auto")}
    print(f"blocks, batch {batch}: off {total['off']:.4f} ms, auto {total['auto']:.4f} ms", flush=True)
    return rows


def timeline_lines(batch: int, labels: list[str], dtype) -> list[str]:
    """The first block of each label, from its CUDA graph, split-K off and on: the median replay,
    then kernel_breakdown's timeline of the last of 3 profiled replays (every kernel and memset in
    start order, idle and side-by-side time). Where a split block's time goes that the convs alone
    do not show."""
    from kernel_breakdown import graph_timeline_lines
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for setting, inputs in planned_blocks(batch, dtype):
        for label in labels:
            block, x_in = next((b, t) for b, t in inputs if b.plan.label.startswith(label))
            with torch.inference_mode():
                graph = timing.CapturedGraph(block.run, x_in)
                replay_ms = timing.time_graph(graph, [x_in], budget_ms=100).median_ms
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        graph.replay()
                        torch.cuda.synchronize()
            lines += ["", f"### {block.plan.label}, split-K {setting}, batch {batch}: replay "
                      f"{replay_ms * 1e3:.1f} us (median)", *graph_timeline_lines(prof, 3)]
            del graph
    print("\n".join(lines), flush=True)
    return lines


def table(rows) -> list[str]:
    columns = ("case", "batch", "dtype", *(f"{_label(s)} ms" for s in SPLITS), "model's count", "cuDNN ms",
               "best split / 1", "model / 1", "model / cuDNN", "max error (bound)")
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        if not row["ok"]:
            blank = [""] * (len(columns) - 5)
            cells = [row["case"], row["batch"], row["dtype"], "FAILED", *blank, row["failure"]]
        elif not row["ms"]:
            cells = [row["case"], row["batch"], row["dtype"], *["-"] * (len(columns) - 4),
                     f"{max(row['errors'].values()):.2e} ({row['bound']:.2e})"]
        else:
            ms = row["ms"]
            best = min(value for label, value in ms.items() if label.startswith("split"))
            error = f"{max(row['errors'].values()):.2e} ({row['bound']:.2e})"
            timed = (f"{ms[_label(s)]:.4f}" if _label(s) in ms else "-" for s in SPLITS)
            cells = [row["case"], row["batch"], row["dtype"], *timed,
                     row["model"], f"{ms['cuDNN']:.4f}", f"{best / ms['split 1']:.2f}",
                     f"{ms['model'] / ms['split 1']:.2f}", f"{ms['model'] / ms['cuDNN']:.2f}", error]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--model-batches", default="1,2,4,8")
    parser.add_argument("--model-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the network's timings (again for each)")
    parser.add_argument("--blocks", type=int, default=0, metavar="BATCH",
                        help="also time each block alone, split-K off and on, at this batch")
    parser.add_argument("--no-cases", action="store_true", help="skip the per-launch cases")
    parser.add_argument("--timeline", type=int, default=0, metavar="BATCH",
                        help="also profile one block of each --timeline-blocks label, off and on")
    parser.add_argument("--timeline-blocks", default="Mixed5a,ReductionA,InceptionB,InceptionC",
                        help="block labels (their starts) for --timeline")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    extension.load()
    op = torch.ops.inception_fast.cuda_conv_fprop
    rows = []
    for index, (name, height, width, c, k, (r, s), stride, (pad_h, pad_w)) in enumerate(
            [] if args.no_cases else CASES):
        for batch in (int(b) for b in args.batches.split(",")):
            for dtype in (torch.float16, torch.bfloat16) if index < BF16_CASES else (torch.float16,):
                case = (name, batch, height, width, c, k, r, s, stride, pad_h, pad_w, dtype)
                rows.append(run_case(op, *case, timed=dtype == torch.float16))
                print(table(rows[-1:])[-1], flush=True)
    gemm = torch.ops.inception_fast.cuda_gemm_conv1x1
    for name, size, k, n in [] if args.no_cases else GEMM_CASES:
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(run_gemm_case(gemm, name, batch, size, k, n))
            print(table(rows[-1:])[-1], flush=True)
    lock_failure = locks_stay_clear(op)
    print(f"locks: {lock_failure or 'clear after 400 launches on two streams'}", flush=True)
    model = model_rows([int(b) for b in args.model_batches.split(",") if b], torch.float16)
    for setting in args.model_env:
        name, value = setting.split("=", 1)
        os.environ[name] = value
        print(f"with {name}={value}:", flush=True)
        model += model_rows([int(b) for b in args.model_batches.split(",") if b], torch.float16)
        os.environ.pop(name)  # each setting alone
    blocks = block_rows(args.blocks, torch.float16) if args.blocks else []
    timeline = []
    if args.timeline:
        timeline = timeline_lines(args.timeline, args.timeline_blocks.split(","), torch.float16)
    lines = table(rows)
    print("\n".join(lines), flush=True)
    out_dir = os.environ.get("OUT")
    if out_dir:
        document = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "commit": os.environ.get("INCEPTION_FAST_COMMIT", "unknown"), "rows": rows,
                    "locks": lock_failure, "model": model, "blocks": blocks}
        Path(out_dir, "split_k_check.json").write_text(json.dumps(document, indent=1) + "\n")
        Path(out_dir, "split_k_check.md").write_text("\n".join(lines + timeline) + "\n")
    failures = sum(not row["ok"] for row in rows) + (lock_failure is not None)
    print(f"{len(rows)} cases, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
