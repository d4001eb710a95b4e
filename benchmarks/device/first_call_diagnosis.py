"""Where a first call's seconds go, in fresh processes on empty caches (the CUDA extension
ready-built, as after `pip install`):

- `compile_times_b<N>.json`: every Triton variant a cold first call at batch N compiles, one
  after another (INCEPTION_FAST_COMPILE_WORKERS=0), with Triton's per-stage compile times (its
  compile listener) and the variant's constants, warps and pipeline stages;
- `warm_import_stacks.txt`: a warm first call at batch 1 (after a cold one on the same caches)
  with the stack of whatever first imports torch._dynamo, sympy, Inductor or FSDP (none of them
  is needed by an eager call);
- `warm_profile.txt`: one more warm process under cProfile, whole (imports, model, optimize(),
  the first call): the functions by cumulative and by own time.

    python benchmarks/device/first_call_diagnosis.py --build-cache DIR --out DIR [--batch 2048]
        [--steps compile,imports,profile]
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inception_fast.first_inference import RESULT_PREFIX, cache_env  # noqa: E402

HEAVY = ("torch._dynamo", "sympy", "torch._inductor", "torch.distributed.fsdp",
         "torch._higher_order_ops.triton_kernel_wrap", "torch.fx.experimental.symbolic_shapes")

COMPILE_TIMES = r"""
import json, sys, time
import torch
from triton import knobs
from inception_fast import optimize
from inception_fast.reference import inception_v4

rows = []
def listener(src, metadata, metadata_group, times, cache_hit):
    constants = {str(k): v if isinstance(v, (int, float, bool, str, type(None))) else str(v)
                 for k, v in src.constants.items()}
    rows.append({"name": src.name, "cache_hit": cache_hit, "total_s": times.total / 1e6,
                 "stages_s": {k: v / 1e6 for k, v in times.lowering_stages},
                 "num_warps": metadata.get("num_warps"), "num_stages": metadata.get("num_stages"),
                 "constants": constants})
knobs.compilation.listener = listener
model = optimize(inception_v4(), dtype=torch.float16, device="cuda")
x = torch.randn(int(sys.argv[1]), 3, 299, 299, device="cuda", dtype=torch.float16)
start = time.perf_counter()
with torch.inference_mode():
    model(x.contiguous(memory_format=torch.channels_last))
torch.cuda.synchronize()
json.dump({"first_call_s": time.perf_counter() - start, "variants": rows}, open(sys.argv[2], "w"), indent=1)
"""

IMPORT_STACKS = r"""
import sys, traceback
HEAVY = sys.argv.pop(1).split(",")
class Watch:
    def find_spec(self, name, path, target=None):
        if name in HEAVY and name not in sys.modules:
            print(f"### import {name}", file=sys.stderr)
            traceback.print_stack(limit=18, file=sys.stderr)
        return None
sys.meta_path.insert(0, Watch())
import runpy
sys.argv = ["inception_fast"] + sys.argv[1:]
runpy.run_module("inception_fast", run_name="__main__", alter_sys=True)
"""


def fresh_caches(build_cache: Path) -> dict:
    """Empty caches but for the ready-built extension."""
    root = tempfile.mkdtemp(prefix="first-call-diagnosis-")
    env = cache_env(root)
    (Path(env["INCEPTION_FAST_CACHE_DIR"]) / "build").symlink_to(build_cache / "build")
    return env


def compile_times(build_cache: Path, batch: int, out: Path) -> None:
    env = fresh_caches(build_cache)
    env["INCEPTION_FAST_COMPILE_WORKERS"] = "0"
    target = out / f"compile_times_b{batch}.json"
    proc = subprocess.run([sys.executable, "-c", COMPILE_TIMES, str(batch), str(target)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return
    found = json.loads(target.read_text())
    variants = sorted(found["variants"], key=lambda row: -row["total_s"])
    print(f"batch {batch}: first call {found['first_call_s']:.1f} s, {len(variants)} variants, "
          f"{sum(row['total_s'] for row in variants):.1f} s of compiling one after another")
    for row in variants:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items())
        print(f"  {row['name']} {row['total_s']:.2f} s ({stages}); warps {row['num_warps']}, "
              f"stages {row['num_stages']}")


def warm_imports(build_cache: Path, out: Path, profile: bool) -> None:
    env = fresh_caches(build_cache)
    args = ["_first-inference", "--config", "fused", "--backend", "auto", "--device", "cuda",
            "--dtype", "fp16", "--batch", "1", "--image-size", "299"]
    for caches in ("cold", "warm"):
        if caches == "warm":
            watched = [sys.executable, "-c", IMPORT_STACKS, ",".join(HEAVY)]
        else:
            watched = [sys.executable, "-m", "inception_fast"]
        start = time.time()
        proc = subprocess.run(watched + args, env=env, capture_output=True, text=True, check=False)
        marks = [json.loads(line[len(RESULT_PREFIX):]) for line in proc.stdout.splitlines()
                 if line.startswith(RESULT_PREFIX)]
        steps = ({name: round(wall - start, 2) for name, wall in marks[0].items()} if marks
                 else proc.stderr[-500:])
        print(f"{caches} first inference at batch 1: {steps}")
        if caches == "warm":
            (out / "warm_import_stacks.txt").write_text(proc.stderr)
            imported = [line for line in proc.stderr.splitlines() if line.startswith("### import")]
            print("  " + ("; ".join(imported) if imported else "none of " + ", ".join(HEAVY) + " imported"))
    if profile:
        stats_file = out / "warm_profile.prof"
        start = time.time()
        command = [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "inception_fast", *args]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        print(f"warm first inference under cProfile: {time.time() - start:.1f} s (exit {proc.returncode})")
        text = io.StringIO()
        stats = pstats.Stats(str(stats_file), stream=text)
        stats.sort_stats("cumulative").print_stats(80)
        stats.sort_stats("tottime").print_stats(40)
        (out / "warm_profile.txt").write_text(text.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-cache", type=Path, required=True,
                        help="an INCEPTION_FAST_CACHE_DIR whose build/ holds the extension")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", default="compile,imports,profile",
                        help="which of compile (serial compile times), imports (cold and warm first "
                             "inference, heavy imports), profile (a warm one under cProfile)")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    if "compile" in steps:
        compile_times(args.build_cache, args.batch, args.out)
    if steps & {"imports", "profile"}:
        warm_imports(args.build_cache, args.out, "profile" in steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
