"""The CUTLASS sm90 implicit-GEMM k x k conv op (`torch.ops.inception_fast.cuda_conv_fprop`)
against cuDNN on Inception-v4's k x k convs, fp16, batch 32 and 256. Run through
wgmma_check.sh (it installs the CUTLASS headers and builds the extension first), or, where both
are present:

    python benchmarks/device/conv_fprop_check.py

Each case first checks the op against float64 with each tile shape (128 rows by 128, 96 or 64
channels, 64 by 64, 256 rows by 128 or 96, and the op's own choice; at most twice cuDNN's own error plus
1e-6; a case that fails is reported and not timed),
then times them and cuDNN: medians of CUDA-event timings with the
L2 flushed before every call (`inception_fast.timing`). Ours reads a channel slice of a wider
input and writes a channel slice of a wider output, with bias and ReLU: by default 8 channels
into buffers 16 channels wider (each pixel's slice starts 16 bytes off a 128-byte line), with
--on-line 64 channels into buffers whose width is a multiple of 64 (every pixel's slice starts a
line, as in most of the network's buffers); cuDNN is F.conv2d
(channels_last, cudnn.benchmark) without the ReLU and the slices, timed with the bias and
without it (as the library floor times it, `inception_fast.conv_floor`): PyTorch adds a bias
after cuDNN's conv, a pass over the output. Writes
$OUT/conv_fprop_check.md and .json when OUT is set; exits non-zero when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F

from inception_fast import extension, timing
from inception_fast.testing import relative_l2

# Inception-v4's k x k convs: (name, height, width, in, out, (r, s), stride, (pad_h, pad_w))
CASES = [
    ("Stem1 3x3", 147, 147, 32, 32, (3, 3), 1, (0, 0)),
    ("Stem2 3x3", 147, 147, 32, 64, (3, 3), 1, (1, 1)),
    ("Mixed3a 3x3/2", 147, 147, 64, 96, (3, 3), 2, (0, 0)),
    ("Mixed4a 3x3", 73, 73, 64, 96, (3, 3), 1, (0, 0)),
    ("Mixed4a 1x7", 73, 73, 64, 64, (1, 7), 1, (0, 3)),
    ("Mixed4a 7x1", 73, 73, 64, 64, (7, 1), 1, (3, 0)),
    ("Mixed5a 3x3/2", 71, 71, 192, 192, (3, 3), 2, (0, 0)),
    ("InceptionA 3x3 64-96", 35, 35, 64, 96, (3, 3), 1, (1, 1)),
    ("InceptionA 3x3 96-96", 35, 35, 96, 96, (3, 3), 1, (1, 1)),
    ("ReductionA 3x3/2 384", 35, 35, 384, 384, (3, 3), 2, (0, 0)),
    ("ReductionA 3x3 192-224", 35, 35, 192, 224, (3, 3), 1, (1, 1)),
    ("InceptionB 1x7 192-224", 17, 17, 192, 224, (1, 7), 1, (0, 3)),
    ("InceptionB 7x1 224-256", 17, 17, 224, 256, (7, 1), 1, (3, 0)),
    ("ReductionB 3x3/2 192", 17, 17, 192, 192, (3, 3), 2, (0, 0)),
    ("InceptionC 1x3 384-256", 8, 8, 384, 256, (1, 3), 1, (0, 1)),
    ("InceptionC 3x1 448-512", 8, 8, 448, 512, (3, 1), 1, (1, 0)),
]
LINE = 64  # channels of fp16 in a 128-byte line


def slice_layout(channels: int, on_line: bool) -> tuple[int, int]:
    """(first channel, buffer width) of a slice of `channels`: 8 channels into a buffer 16
    wider, or (on_line) a line into a buffer a line wider on both sides, rounded to lines."""
    if on_line:
        return LINE, LINE * (2 + -(-channels // LINE))
    return 8, channels + 16


def case_tensors(batch, height, width, c, k, r, s, stride, pad_h, pad_w, on_line=False, seed=0):
    """(x, weight, bias, out) in fp16: x holds the conv's input at channel
    slice_layout(c, on_line)[0], out (zeros) has room for its output at slice_layout(k, on_line)[0]."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    pitch = slice_layout(c, on_line)[1]
    x = torch.randn(batch, height, width, pitch, device="cuda", generator=generator).half()
    weight = (torch.randn(k, r, s, c, device="cuda", generator=generator) / (r * s * c) ** 0.5).half()
    bias = torch.randn(k, device="cuda", generator=generator) * 0.1
    p = (height + 2 * pad_h - r) // stride + 1
    q = (width + 2 * pad_w - s) // stride + 1
    out = torch.zeros(batch, p, q, slice_layout(k, on_line)[1], device="cuda", dtype=torch.float16)
    return x, weight, bias, out


def _median_ms(fn) -> float:
    return timing.time_cuda(lambda i: fn(), budget_ms=100, warmup_ms=20, max_reps=200).median_ms


SHAPES = ((128, 128), (128, 96), (128, 64), (64, 64), (256, 128), (256, 96))  # the op's (tile_m, tile_n)
TILES = (*SHAPES, (0, 0))  # (0, 0): its model picks per conv


def _label(tile) -> str:
    return f"{tile[0]}x{tile[1]}" if tile[0] else "chosen"


def run_case(op, name, batch, height, width, c, k, r, s, stride, pad_h, pad_w, on_line=False) -> dict:
    """Check one case against float64 on a few images with each tile width, then time them
    against cuDNN."""
    x, weight, bias, out = case_tensors(batch, height, width, c, k, r, s, stride, pad_h, pad_w, on_line)
    in_c0, out_c0 = slice_layout(c, on_line)[0], slice_layout(k, on_line)[0]
    source = x[..., in_c0:in_c0 + c].permute(0, 3, 1, 2)
    kernel = weight.permute(0, 3, 1, 2)
    cudnn_in = source.contiguous(memory_format=torch.channels_last)
    conv = dict(stride=stride, padding=(pad_h, pad_w))
    row = {"case": name, "batch": batch, "ok": True, "error": 0.0, "ms": {}}
    few = slice(0, min(batch, 4))  # the float64 reference on a few images
    exact = F.conv2d(source[few].double(), kernel.double(), bias.double(), **conv).relu()
    cudnn = F.conv2d(cudnn_in[few], kernel, bias.half(), **conv).relu()
    row["bound"] = 2 * relative_l2(cudnn, exact) + 1e-6
    for tile in TILES:
        def ours(tile=tile):
            op(x, weight, bias, out, in_c0, out_c0, stride, pad_h, pad_w, True, tile[1], False, 0, tile[0])

        try:
            out.zero_()
            ours()
        except RuntimeError as err:
            return {**row, "ok": False, "error": f"tile {_label(tile)}: {str(err).splitlines()[0][:200]}"}
        error = relative_l2(out[few, ..., out_c0:out_c0 + k].permute(0, 3, 1, 2), exact)
        row["error"] = max(row["error"], error)
        if error > row["bound"]:
            return {**row, "ok": False, "error": f"tile {_label(tile)}: {error:.2e} > {row['bound']:.2e}"}
        row["ms"][_label(tile)] = _median_ms(ours)
    row["ours_ms"] = min(row["ms"][_label(tile)] for tile in SHAPES)
    row["cudnn_ms"] = _median_ms(lambda: F.conv2d(cudnn_in, kernel, bias.half(), **conv))
    row["cudnn_no_bias_ms"] = _median_ms(lambda: F.conv2d(cudnn_in, kernel, None, **conv))
    row["tflops"] = 2.0 * out[..., 0].numel() * k * r * s * c / row["ours_ms"] / 1e9
    return row


COLUMNS = ("case", "batch", *(f"{_label(tile)} ms" for tile in TILES), "cuDNN ms",
           "cuDNN no bias ms", "best / cuDNN", "chosen / cuDNN", "chosen / no bias", "TFLOP/s (best)",
           "error (bound)")


def table(rows) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        if row["ok"]:
            ms, cudnn, no_bias = row["ms"], row["cudnn_ms"], row["cudnn_no_bias_ms"]
            chosen = ms["chosen"]
            cells = [row["case"], row["batch"], *(f"{ms[_label(t)]:.4f}" for t in TILES), f"{cudnn:.4f}",
                     f"{no_bias:.4f}", f"{row['ours_ms'] / cudnn:.2f}", f"{chosen / cudnn:.2f}",
                     f"{chosen / no_bias:.2f}", f"{row['tflops']:.0f}",
                     f"{row['error']:.2e} ({row['bound']:.2e})"]
        else:
            cells = [row["case"], row["batch"], "FAILED", *[""] * (len(COLUMNS) - 4), row["error"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--on-line", action="store_true", help="slices start 128-byte lines (see above)")
    parser.add_argument("--batches", default="32,256")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    extension.load()
    op = torch.ops.inception_fast.cuda_conv_fprop
    rows = []
    for name, height, width, c, k, (r, s), stride, (pad_h, pad_w) in CASES:
        for batch in (int(b) for b in args.batches.split(",")):
            case = (name, batch, height, width, c, k, r, s, stride, pad_h, pad_w, args.on_line)
            rows.append(run_case(op, *case))
            print(table(rows[-1:])[-1], flush=True)
    lines = table(rows)
    print("\n".join(lines), flush=True)
    out_dir = os.environ.get("OUT")
    if out_dir:
        document = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "commit": os.environ.get("INCEPTION_FAST_COMMIT", "unknown"), "on_line": args.on_line,
                    "rows": rows}
        Path(out_dir, "conv_fprop_check.json").write_text(json.dumps(document, indent=1) + "\n")
        Path(out_dir, "conv_fprop_check.md").write_text("\n".join(lines) + "\n")
    failures = sum(not row["ok"] for row in rows)
    print(f"{len(rows)} cases, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
