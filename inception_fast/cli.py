"""`inception-fast` (also `python -m inception_fast`): `bench` and `info`.

    inception-fast info                     versions, devices, which backends work and why not
    inception-fast bench                    GPU: fp16, batches 1,32,256, fused vs the anchors
    inception-fast bench --device cpu       CPU: fp32, batches 1,2, fused vs eager
    inception-fast bench --ttfi             also time to first inference, cold and warm caches
    inception-fast ttfi                     time to first inference only (fused, torch.compile)

`bench` exits with status 1 when a fused configuration fails the accuracy check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path

from .fid.cli import register as register_fid

GPU_BATCHES, CPU_BATCHES = (1, 32, 256), (1, 2)


def _batches(values: list[str] | None) -> tuple[int, ...] | None:
    if not values:
        return None
    batches = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                batch = int(part)
                if batch < 1:
                    raise argparse.ArgumentTypeError(f"--batch must be >= 1, got {batch}")
                batches.append(batch)
    return tuple(batches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inception-fast", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")

    sub.add_parser("info", help="versions, devices and usable backends")

    bench = sub.add_parser("bench", help="validate and time the fused model against the anchors")
    bench.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp32-tf32"],
                       help="default: fp16 on a GPU, fp32 on the CPU")
    bench.add_argument("--batch", action="append", metavar="N[,N...]",
                       help="batch sizes, repeatable or comma-separated (GPU default 1,32,256; CPU 1,2)")
    bench.add_argument("--backend", default="auto", help="auto, torch, triton or cuda (default auto)")
    bench.add_argument("--image-size", type=int, default=299, help="square input size (>= 75; default 299)")
    bench.add_argument("--no-anchors", action="store_true", help="time the fused model only")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile default anchor")
    bench.add_argument("--max-autotune", action="store_true",
                       help="add torch.compile max-autotune (compiles for about 5 minutes per batch size)")
    bench.add_argument("--no-fused-graph", action="store_true",
                       help="skip the fused model under a CUDA graph")
    bench.add_argument("--budget-ms", type=float, help="timed repetitions per configuration, in ms of work")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--ttfi", action="store_true",
                       help="time to first inference in fresh processes, cold and warm caches")
    bench.add_argument("--ttfi-batch", type=int, default=1)

    ttfi = sub.add_parser("ttfi", help="time to first inference in fresh processes, cold and warm caches")
    ttfi.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ttfi.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp32-tf32"])
    ttfi.add_argument("--backend", default="auto")
    ttfi.add_argument("--batch", type=int, default=1, dest="ttfi_batch")
    ttfi.add_argument("--image-size", type=int, default=299)
    ttfi.add_argument("--no-compile", action="store_true", help="skip torch.compile default")
    ttfi.add_argument("--max-autotune", action="store_true", help="add torch.compile max-autotune")
    ttfi.add_argument("--json", metavar="PATH")
    ttfi.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per fresh process")

    child = sub.add_parser("_first-inference")  # the fresh process of --ttfi; not for users
    child.add_argument("--config", required=True)
    child.add_argument("--backend", default="auto")
    child.add_argument("--device", default="cuda")
    child.add_argument("--dtype", default="fp16")
    child.add_argument("--batch", type=int, default=1)
    child.add_argument("--image-size", type=int, default=299)
    register_fid(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info()
    if args.command == "bench":
        return cmd_bench(args, parser)
    if args.command == "ttfi":
        return cmd_ttfi(args)
    if args.command == "fid":
        return args.run(args)
    if args.command == "_first-inference":
        from .first_inference import child_main

        return child_main(args.config, args.backend, args.device, args.dtype, args.batch, args.image_size)
    parser.print_help()
    return 2


# ---------------------------------------------------------------------------------------------
# info


def autoselect_table(device) -> object | None:
    import torch

    """What backend="auto" picks per block, from inception_fast.autoselect when it exists.
    Looked up defensively: the module may be absent or expose a different shape of table."""
    try:
        module = importlib.import_module("inception_fast.autoselect")
    except ImportError:
        return None
    table = getattr(module, "choice_table", None)
    if not callable(table):
        return "inception_fast.autoselect has no choice_table()"
    try:
        rows = table()
    except Exception as err:  # noqa: BLE001 - info reports, never fails
        return f"choice_table() failed: {type(err).__name__}: {err}"
    if not rows:
        where = getattr(module, "cache_file", lambda: "its cache file")()
        return f"no choices yet: each is timed on first use of a block shape and kept in {where}"
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        # This card's rows first of all: the cache may hold choices made on other cards.
        wanted = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
        mine = [r for r in rows if wanted is None or r.get("card") in (None, wanted)] or rows
        return [" ".join(f"{k}={v}" for k, v in r.items()) for r in mine]
    return rows


def _print_table_like(value, indent: str = "  ") -> None:
    if isinstance(value, str):
        for line in value.splitlines():
            print(indent + line)
    elif isinstance(value, dict):
        for key, item in value.items():
            print(f"{indent}{key}: {item}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            print(indent + (" | ".join(map(str, item)) if isinstance(item, (list, tuple)) else str(item)))
    else:
        print(indent + repr(value))


def cmd_info() -> int:
    import torch

    from . import __version__
    from .backends import BACKENDS, backend_status, resolve_backend
    from .bench import _version, git_commit, supports_cuda_graph_option

    commit = git_commit()
    changes = " +uncommitted changes" if commit["dirty"] else ""
    print(f"inception_fast {__version__} (commit {commit['commit'][:12]}{changes})")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}, "
          f"triton {_version('triton')}, timm {_version('timm')}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {props.name}, sm_{props.major}{props.minor}, "
                  f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB")
        devices.insert(0, "cuda")
    else:
        print("CUDA: not available (no GPU or no driver); the torch backend runs on the CPU")
    for device in devices:
        print(f"backends on {device}:")
        for name in BACKENDS:
            ok, reason = backend_status(name, device)
            print(f"  {name:<7} {'usable' if ok else 'NOT usable'}: {reason}")
        try:
            print(f"  backend='auto' -> {resolve_backend('auto', device)}")
        except Exception as err:  # noqa: BLE001 - info reports, never fails
            print(f"  backend='auto' -> error: {err}")
    table = autoselect_table(devices[0])
    if table is not None:
        print("per-block choices of inception_fast.autoselect (triton vs cuda, timed once per shape):")
        _print_table_like(table, indent="  ")
    print(f"optimize(cuda_graph=True): {'available' if supports_cuda_graph_option() else 'not available'}")
    for name in ("TRITON_CACHE_DIR", "INCEPTION_FAST_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        print(f"{name}={os.environ.get(name, '(default)')}")
    return 0


# ---------------------------------------------------------------------------------------------
# bench


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def format_table(rows: list[dict]) -> str:
    header = ["configuration", "batch", "median ms", "images/s", "TFLOP/s", "x eager", "x best anchor",
              "rel L2", "2x bound", "max |err|", "check"]
    lines = []
    for r in rows:
        if "median_ms" not in r:
            lines.append([r["config"], str(r["batch"]), "failed: " + r.get("error", "?")[:60]] + [""] * 8)
            continue
        lines.append([
            r["config"] + (" *" if r["cuda_graph"] else ""), str(r["batch"]), _fmt(r["median_ms"], ".3f"),
            _fmt(r["images_per_s"], ",.0f"), _fmt(r["tflops"], ".1f"), _fmt(r.get("speedup_vs_eager"), ".2f"),
            _fmt(r.get("speedup_vs_best_anchor"), ".2f"), _fmt(r.get("rel_l2"), ".2e"),
            _fmt(r.get("bound"), ".2e"), _fmt(r.get("max_abs"), ".2e"),
            r.get("check", "-") if r["kind"] == "fused" else f"({r.get('check', '-')})",
        ])
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    return "\n".join(out)


def format_ttfi(results: list[dict]) -> str:
    lines = ["time to first inference (fresh process; cold = empty cache dirs, warm = the same dirs again):"]
    for r in results:
        if "seconds" in r:
            steps = ", ".join(f"{name} {s:.1f}" for name, s in r["steps_s"].items() if name != "first_logits")
            lines.append(
                f"  {r['config']:<20} {r['cache']:<5} {r['seconds']:7.1f} s   (seconds since launch: {steps})"
            )
        else:
            lines.append(f"  {r['config']:<20} {r['cache']:<5} failed: {r['error']}")
    return "\n".join(lines)


def cmd_bench(args, parser) -> int:
    import torch

    from . import bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.image_size < 75:
        parser.error(f"--image-size must be at least 75 (Inception-v4's smallest), got {args.image_size}")
    try:
        batches = _batches(args.batch) or (GPU_BATCHES if on_gpu else CPU_BATCHES)
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    from .backends import resolve_backend

    try:  # an unknown or unusable backend is a usage error, found before any model is built
        resolve_backend(args.backend, device)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast bench: {err}", file=sys.stderr)
        return 2
    options = bench.BenchOptions(
        device=device, dtype=args.dtype or ("fp16" if on_gpu else "fp32"), batches=batches,
        backend=args.backend, image_size=args.image_size, anchors=not args.no_anchors,
        compile=not args.no_compile, max_autotune=args.max_autotune, fused_graph=not args.no_fused_graph,
        budget_ms=args.budget_ms, seed=args.seed,
    )
    def write_json(document: dict) -> None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1, default=str) + "\n")

    try:
        document = bench.run_bench(options, checkpoint=write_json if args.json else None)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast bench: {err}", file=sys.stderr)
        return 2
    if args.ttfi:
        document["first_inference"] = run_ttfi(options, args)
    env = document["environment"]
    print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | cuDNN {env['cudnn']} | "
          f"commit {str(env['commit'])[:12]}")
    print(f"Inception-v4 {options.image_size}x{options.image_size}, {options.dtype}, "
          f"{document['settings']['flops_per_image'] / 1e9:.2f} GFLOP/image; accuracy: relative L2 of the "
          f"logits vs {document['settings']['reference_dtype'].replace('torch.', '')} reference, "
          f"bound = 2 x eager {options.dtype} + slack")
    print(format_table(document["results"]))
    print("* = CUDA-graph replay; timings are medians of CUDA events (GPU) or perf_counter (CPU)")
    if document.get("first_inference"):
        print(format_ttfi(document["first_inference"]))
    if args.json:
        write_json(document)
        print(f"wrote {args.json}", file=sys.stderr)
    failed = bench.failed_checks(document)
    if failed:
        names = ", ".join(f"{r['config']} @ batch {r['batch']}" for r in failed)
        print(f"ACCURACY CHECK FAILED: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_ttfi(args) -> int:
    import torch

    from . import bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = bench.BenchOptions(
        device=device, dtype=args.dtype or ("fp16" if device.startswith("cuda") else "fp32"),
        backend=args.backend, image_size=args.image_size,
    )
    results = run_ttfi(options, args)
    print(format_ttfi(results))
    if args.json:
        document = {
            "schema": "inception_fast.bench/1", "source": "cli-ttfi",
            "environment": bench.environment(device),
            "settings": {**options.__dict__, "batch": args.ttfi_batch}, "results": [],
            "first_inference": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0 if all("seconds" in r for r in results) else 1


def run_ttfi(options, args) -> list[dict]:
    """Fused (and, on a GPU, torch.compile) each in two fresh processes: cold, then warm."""
    from .bench import log
    from .first_inference import cold_and_warm

    configs = ["fused"]
    if options.device.startswith("cuda") and options.anchors:
        configs += ([] if args.no_compile else ["compile:default"])
        configs += ["compile:max-autotune"] if args.max_autotune else []
    results = []
    for config in configs:
        log(f"time to first inference: {config} (two fresh processes, cold then warm)")
        settings = {"backend": options.backend, "device": options.device, "dtype": options.dtype,
                    "batch": args.ttfi_batch, "image_size": options.image_size}
        runs = cold_and_warm(config, timeout_s=getattr(args, "timeout", 900.0), **settings)
        results += [{**r, **settings} for r in runs]
    return results
