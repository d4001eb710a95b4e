"""`inception-fast` (also `python -m inception_fast`): `info`, `bench` and `ttfi`.

    inception-fast info                     versions, devices, which backends work and why not
    inception-fast bench                    GPU: fp16, batches 1,32,256, fused vs the anchors
    inception-fast bench --device cpu       CPU: fp32, batches 1,2, fused vs eager
    inception-fast bench --ttfi             also time to first inference, cold and warm caches
    inception-fast ttfi                     time to first inference only (fused, torch.compile)
    inception-fast tune --model NAME        time tile configs ahead (no first call waits)
    inception-fast COMMAND --help           the options of each command

`bench` exits with status 1 when a fused configuration fails the accuracy check.
"""

from __future__ import annotations

import argparse
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
    from .backends import BACKENDS

    parser = argparse.ArgumentParser(prog="inception-fast", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")

    sub.add_parser(
        "info", help="versions, devices and usable backends",
        description="Versions (package, Python, torch, CUDA, cuDNN, triton, timm), the GPUs, which "
                    "backends work on each device and why not, what backend='auto' runs, the "
                    "per-block choices it has timed, and the cache directories.",
    )

    add_bench_parser(sub)

    ttfi = sub.add_parser(
        "ttfi", help="time to first inference in fresh processes, cold and warm caches",
        description="Seconds from `python` starting to the first logits, in fresh processes: once with "
                    "empty cache directories (cold), once more on the same directories (warm); the fused "
                    "model and, on a GPU, torch.compile.",
    )
    ttfi.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ttfi.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp32-tf32"],
                      help="default: fp16 on a GPU, fp32 on the CPU")
    ttfi.add_argument("--backend", default="auto",
                      help=f"{', '.join(BACKENDS[:-1])} or {BACKENDS[-1]} (default auto)")
    ttfi.add_argument("--batch", type=int, default=1, dest="ttfi_batch", metavar="N",
                      help="batch size (default 1)")
    ttfi.add_argument("--image-size", type=int, default=299, metavar="N",
                      help="square input size (>= 75; default 299)")
    ttfi.add_argument("--no-compile", action="store_true", help="skip torch.compile default")
    ttfi.add_argument("--max-autotune", action="store_true", help="add torch.compile max-autotune")
    ttfi.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ttfi.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per fresh process")

    tune = sub.add_parser(
        "tune", help="time the Triton kernel's tile configs and auto's backend choices ahead of time",
        description="A first call never waits for tile tuning: it uses cached, shipped or heuristic tile "
                    "configs. This times every stage of a network at the given batch sizes on this GPU "
                    "and keeps the fastest configs in the tuning cache (INCEPTION_FAST_CACHE_DIR), then "
                    "times backend=auto's candidates for every block where no shipped choice applies.",
    )
    tune.add_argument("--model", default="inception_v4",
                      help="network name (default inception_v4); see `inception-fast bench --list-models`")
    tune.add_argument("--batch", action="append", metavar="N[,N...]",
                      help="batch sizes, repeatable or comma-separated (default 1,32,256)")
    tune.add_argument("--dtype", choices=["fp16", "bf16", "fp32-tf32"], default="fp16",
                      help="dtype to tune for (default fp16)")
    tune.add_argument("--image-size", type=int, metavar="N", help="square input size (default: the model's)")
    tune.add_argument("--force", action="store_true",
                      help="ignore the shipped tables and re-time tile configs already in the cache")
    register_fid(sub)
    return parser


FIRST_INFERENCE = "_first-inference"  # the fresh process that `ttfi` starts; not for users


def _first_inference_parser() -> argparse.ArgumentParser:
    child = argparse.ArgumentParser(prog=f"inception-fast {FIRST_INFERENCE}")
    child.add_argument("--config", required=True)
    child.add_argument("--backend", default="auto")
    child.add_argument("--device", default="cuda")
    child.add_argument("--dtype", default="fp16")
    child.add_argument("--batch", type=int, default=1)
    child.add_argument("--image-size", type=int, default=299)
    return child


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FIRST_INFERENCE]:  # kept out of the public parser, so usage does not list it
        from .first_inference import child_main

        args = _first_inference_parser().parse_args(argv[1:])
        return child_main(args.config, args.backend, args.device, args.dtype, args.batch, args.image_size)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info()
    if args.command == "bench":
        return cmd_bench(args, parser)
    if args.command == "ttfi":
        return cmd_ttfi(args)
    if args.command == "tune":
        return cmd_tune(args)
    if args.command == "fid":
        return args.run(args)
    parser.print_help()
    return 2


# ---------------------------------------------------------------------------------------------
# info


def auto_choice_table(device) -> str | list[str]:
    """What backend="auto" has picked per block (this card's choices first), or why nothing."""
    import torch

    try:
        from .backends import auto_backend, shipped_choices
    except ValueError as err:  # a wrong INCEPTION_FAST_AUTO_EXPERIMENTS (the message says so)
        return str(err)
    try:
        shipped = shipped_choices.describe(device)
        rows = auto_backend.choice_table()
    except Exception as err:  # noqa: BLE001 - info reports, never fails
        return f"choice_table() failed: {type(err).__name__}: {err}"
    if not rows:
        return [shipped, f"no choices cached yet (they are kept in {auto_backend.cache_file()})"]
    # This card's rows first of all: the cache may hold choices made on other cards.
    wanted = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    mine = [r for r in rows if wanted is None or r.get("card") in (None, wanted)] or rows
    return [shipped] + [" ".join(f"{k}={v}" for k, v in r.items()) for r in mine]


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
    gpu_backends = []
    for device in devices:
        print(f"backends on {device}:")
        for name in BACKENDS:
            if name == "auto":  # always usable: it runs whatever it resolves to
                print(f"  {name:<7} usable: {_auto_line(resolve_backend, device)}")
                continue
            ok, reason = backend_status(name, device)
            print(f"  {name:<7} {'usable' if ok else 'NOT usable'}: {reason}")
            if ok and device == "cuda" and name != "torch":
                gpu_backends.append(name)
    print("per-block choices of backend 'auto' (shipped for some cards, else timed once per shape):")
    _print_table_like(auto_choice_table(devices[0]), indent="  ")
    print(f"optimize(cuda_graph=True): {_cuda_graph_line(supports_cuda_graph_option(), gpu_backends)}")
    print(f"on a GPU, a first call's new Triton kernels: {_compile_line()}")
    for name in ("TRITON_CACHE_DIR", "INCEPTION_FAST_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        print(f"{name}={os.environ.get(name, '(default)')}")
    return 0


def _compile_line() -> str:
    from .compile_ahead import ENV_WORKERS, workers

    try:
        count = workers()
    except ValueError as err:
        return str(err)
    if count < 2:
        return f"compiled one by one as they are launched ({ENV_WORKERS}={count})"
    return f"compiled ahead in up to {count} worker processes ({ENV_WORKERS}; 0: one by one)"


def _auto_line(resolve_backend, device: str) -> str:
    """What backend='auto' runs on `device`, and why."""
    try:
        resolved = resolve_backend("auto", device)
    except Exception as err:  # noqa: BLE001 - info reports, never fails
        return f"backend='auto' -> error: {err}"
    if resolved == "auto":
        return "backend='auto' -> per block and batch size, the fastest usable kernels or torch (timed once)"
    if device == "cpu":
        return f"backend='auto' -> {resolved} (on the CPU, 'auto' is the torch backend)"
    if resolved == "torch":
        return "backend='auto' -> torch (neither GPU backend is usable here, see above)"
    return f"backend='auto' -> {resolved} (the one GPU backend usable here)"


def _cuda_graph_line(option_exists: bool, gpu_backends: list[str]) -> str:
    if not option_exists:
        return "not available (this optimize() has no cuda_graph option)"
    if not gpu_backends:
        return "not available here: it needs a usable GPU backend (triton or cuda), and there is none"
    return f"available (with backend {' or '.join(repr(b) for b in [*gpu_backends, 'auto'])})"


# ---------------------------------------------------------------------------------------------
# bench


BENCH_DESCRIPTION = """\
Validate and time one network: the fused model (inception_fast.optimize) against the anchors,
in one process on the same inputs. Rows: "fused default" = optimize(model, dtype=...) called as
a user would; "fused BACKEND, CUDA graph" = optimize(..., cuda_graph=True); the anchors (eager,
eager under a CUDA graph, torch.compile with and without freezing; "x anchor" is the ratio to
the fastest of them at that batch); and "cuDNN convs alone", every conv of the network timed
alone in cuDNN, also per block. Every row's output is checked against the reference; exit
status 1 when a fused row fails the check (a NaN or inf never passes), 2 on a usage error. A
network that optimize() does not accept yet is reported as not supported (exit status 0)."""


def add_bench_parser(sub) -> argparse.ArgumentParser:
    from .anchors import COMPILE_ANCHORS, DEFAULT_COMPILE_ANCHORS
    from .backends import EXPERIMENTAL
    from .bench_models import MODELS

    bench = sub.add_parser(
        "bench", help="validate and time the fused model against the anchors", description=BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--model", default="inception_v4", choices=list(MODELS), metavar="NAME",
                       help=f"network to time: {', '.join(MODELS)} (default inception_v4; see --list-models)")
    bench.add_argument("--list-models", action="store_true",
                       help="print the networks (source, input size, counted GFLOP/image, anchors, whether "
                            "this version's optimize() accepts it) and exit")
    bench.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp32-tf32"],
                       help="default on a GPU: the model's (fp16; fp32-tf32 for fid_inception_v3); "
                            "fp32 on the CPU")
    bench.add_argument("--batch", action="append", metavar="N[,N...]",
                       help="batch sizes, repeatable or comma-separated, e.g. 1,8,32,256 "
                            "(GPU default 1,32,256; CPU 1,2)")
    bench.add_argument("--backend", default="auto",
                       help="the backend of the 'fused BACKEND' rows (auto, torch, triton, cuda, "
                            f"triton-gemm, or an experimental one: {', '.join(EXPERIMENTAL)}); the "
                            "'fused default' row always calls optimize(model, dtype=...) (default auto)")
    bench.add_argument("--image-size", type=int,
                       help="square input size (default: the model's own, e.g. 299; Inception-v4 "
                            "needs >= 75)")
    bench.add_argument("--no-anchors", action="store_true",
                       help="time the fused model (and the floor) only, no eager or torch.compile anchors")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip every torch.compile anchor (each compiles for about 40 s per batch size)")
    bench.add_argument("--compile-anchors", metavar="NAME[,NAME...]",
                       help=f"torch.compile anchors to time, from {', '.join(COMPILE_ANCHORS)} (ro = "
                            f"reduce-overhead; default {','.join(DEFAULT_COMPILE_ANCHORS)})")
    bench.add_argument("--compile-every-batch", action="store_true",
                       help="time each torch.compile anchor at every batch size (default: default + freezing "
                            "from batch 32 up, reduce-overhead + freezing up to batch 32, where each is "
                            "the one to beat)")
    bench.add_argument("--max-autotune", action="store_true",
                       help="add torch.compile max-autotune without and with freezing (5-7 minutes of "
                            "compiling per batch size each)")
    bench.add_argument("--no-fused-graph", action="store_true",
                       help="skip the fused model under a CUDA graph (optimize(..., cuda_graph=True))")
    bench.add_argument("--no-floor", action="store_true",
                       help="skip the library floor (every conv alone in cuDNN, per block and in total)")
    bench.add_argument("--anchors-if-unsupported", action="store_true",
                       help="time the anchors and the floor even when optimize() does not accept the model "
                            "(default: report it as not supported and time nothing)")
    bench.add_argument("--budget-ms", type=float,
                       help="time spent on the timed repetitions of each configuration, in ms of work "
                            "(default 1000 on a GPU, 2000 on the CPU)")
    bench.add_argument("--floor-budget-ms", type=float, default=50.0,
                       help="the same for each conv of the floor (default 50)")
    bench.add_argument("--seed", type=int, default=0,
                       help="seed of the random weights and inputs (default 0)")
    bench.add_argument("--json", metavar="PATH",
                       help="also write the results as JSON (rewritten after each batch size)")
    bench.add_argument("--ttfi", action="store_true",
                       help="also time to first inference in fresh processes, cold and warm caches "
                            "(Inception-v4 only)")
    bench.add_argument("--ttfi-batch", type=int, default=1,
                       help="batch size of the time-to-first-inference runs (default 1)")
    return bench


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _columns(header: list[str], lines: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    return "\n".join(out)


def format_table(rows: list[dict]) -> str:
    header = ["configuration", "batch", "median ms", "images/s", "TFLOP/s", "peak MiB", "x eager", "x anchor",
              "rel L2", "2x bound", "max |err|", "check"]
    lines = []
    for r in rows:
        if r.get("suite", "model") != "model":
            continue
        if "median_ms" not in r:
            what = "not supported by this version (above)" if r.get("status") == "not supported" \
                else "failed: " + r.get("error", "?")
            lines.append([r["config"], str(r["batch"] or "-"), what[:100]] + [""] * 9)
            continue
        check = r.get("check", "-")
        lines.append([
            r["config"] + (" *" if r["cuda_graph"] else ""), str(r["batch"]), _fmt(r["median_ms"], ".3f"),
            _fmt(r["images_per_s"], ",.0f"), _fmt(r.get("tflops"), ".1f"), _fmt(r.get("peak_mb"), ",.0f"),
            _fmt(r.get("speedup_vs_eager"), ".2f"),
            _fmt(r.get("speedup_vs_best_anchor"), ".2f"), _fmt(r.get("rel_l2"), ".2e"),
            _fmt(r.get("bound"), ".2e"), _fmt(r.get("max_abs"), ".2e"),
            check if r["kind"] == "fused" else ("-" if r["kind"] == "floor" else f"({check})"),
        ])
    return _columns(header, lines)


def format_anchors(rows: list[dict]) -> str:
    """Which anchor is "the anchor" (the fastest) at each batch size."""
    lines = []
    for batch in sorted({r["batch"] for r in rows if r.get("best_anchor")}):
        name = next(r["best_anchor"] for r in rows if r.get("best_anchor") and r["batch"] == batch)
        best = next(r for r in rows if r["batch"] == batch and r["config"] == name and "median_ms" in r)
        lines.append(f"the anchor at batch {batch}: {name}, {best['median_ms']:.3f} ms")
    return "\n".join(lines)


def format_floor(rows: list[dict]) -> str:
    """The floor per block: one line per block, one column per batch size."""
    blocks = [r for r in rows if r.get("suite") == "conv-floor"]
    if not blocks:
        return ""
    batches = sorted({r["batch"] for r in blocks})
    order = list(dict.fromkeys(r["label"] for r in blocks))
    cell = {(r["label"], r["batch"]): r for r in blocks}
    header = ["block", "convs", "GFLOP/img"] + [f"b={b} ms" for b in batches]
    lines = []
    for label in order:
        first = next(r for r in blocks if r["label"] == label)
        lines.append([label, str(first["convs"]), f"{first['gflop_per_image']:.3f}"]
                     + [_fmt(cell.get((label, b), {}).get("median_ms"), ".4f") for b in batches])
    totals = {b: sum(r["median_ms"] for r in blocks if r["batch"] == b) for b in batches}
    convs = sum(next(r for r in blocks if r["label"] == label)["convs"] for label in order)
    gflop = sum(next(r for r in blocks if r["label"] == label)["gflop_per_image"] for label in order)
    lines.append(["total", str(convs), f"{gflop:.3f}"] + [f"{totals[b]:.4f}" for b in batches])
    return f"{blocks[0]['config']}, per block (each conv timed alone, summed):\n" + _columns(header, lines)


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


def cmd_list_models() -> int:
    from .bench import model_table

    header = ["model", "source", "input", "GFLOP/img", "dtype", "anchors", "optimize()"]
    lines = []
    for row in model_table():
        accepted = row.get("optimize", row.get("error", "?"))
        gflops = _fmt(row["gflops_per_image"], ".3f")
        lines.append([row["model"], row["source"], str(row["image_size"]), gflops, row["dtype"],
                      ",".join(row["anchors"]), accepted[:90]])
    print(_columns(header, lines))
    print("GFLOP/img: 2 x the multiply-accumulates of every Conv2d and Linear, counted with forward hooks")
    return 0


def bench_options(args, parser):
    """BenchOptions from the parsed `bench` arguments; usage errors exit through the parser."""
    import torch

    from . import anchors, bench
    from .bench_models import get

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    try:
        batches = _batches(args.batch) or (GPU_BATCHES if on_gpu else CPU_BATCHES)
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    try:
        compile_anchors = anchors.parse_compile_anchors(args.compile_anchors)
    except ValueError as err:
        parser.error(f"--compile-anchors: {err}")
    if args.ttfi and args.model != "inception_v4":
        parser.error("--ttfi times Inception-v4 only; run it without --model or with --model inception_v4")
    model_dtype = get(args.model).dtype
    dtype = args.dtype or (model_dtype if on_gpu else "fp32")
    return bench.BenchOptions(
        model=args.model, device=device, dtype=dtype, batches=batches, backend=args.backend,
        image_size=args.image_size, anchors=not args.no_anchors, compile=not args.no_compile,
        compile_anchors=compile_anchors, max_autotune=args.max_autotune,
        compile_every_batch=args.compile_every_batch, fused_graph=not args.no_fused_graph,
        floor=not args.no_floor,
        anchors_if_unsupported=args.anchors_if_unsupported, budget_ms=args.budget_ms,
        floor_budget_ms=args.floor_budget_ms, seed=args.seed,
    )


def cmd_bench(args, parser) -> int:
    from . import bench

    if args.list_models:
        return cmd_list_models()
    options = bench_options(args, parser)
    from .backends import resolve_backend

    try:  # an unknown or unusable backend is a usage error, found before any model is built
        resolve_backend(args.backend, options.device)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast bench: {err}", file=sys.stderr)
        return 2

    def write_json(document: dict) -> None:
        """Rewritten after each batch size; written aside and renamed, so a run stopped by a time
        limit leaves the last complete document, never half of one."""
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
        partial.replace(path)

    try:
        document = bench.run_bench(options, checkpoint=write_json if args.json else None)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast bench: {err}", file=sys.stderr)
        return 2
    if args.ttfi:
        options.image_size = document["settings"]["image_size"]
        document["first_inference"] = run_ttfi(options, args)
    env, info = document["environment"], document["model_info"]
    print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | cuDNN {env['cudnn']} | "
          f"commit {str(env['commit'])[:12]}")
    size = info["image_size"]
    print(f"{info['name']}: {info['source']}, {size}x{size}, {options.dtype}, {info['gflops_per_image']:.2f} "
          f"GFLOP/image (counted); accuracy: relative L2 of the output vs "
          f"{document['settings']['reference_dtype'].replace('torch.', '')} reference, bound = 2 x eager "
          f"{options.dtype} + slack")
    timed = info["supported"] or options.anchors_if_unsupported
    if not info["supported"]:
        print(f"{info['name']}: {info['unsupported_reason']}")
        if not timed:
            print("nothing timed (--anchors-if-unsupported times the anchors and the floor anyway)")
    if timed:
        print(format_table(document["results"]))
        print("* = CUDA-graph replay; timings are medians of CUDA events (GPU) or perf_counter (CPU); "
              "x anchor = speed-up over the fastest anchor at that batch")
    if format_anchors(document["results"]):
        print(format_anchors(document["results"]))
    rules = document["settings"]["compile_batch_rules"]
    skipped = [f"{name} ({rule})" for name, rule in rules.items() if rule]
    if skipped and not options.compile_every_batch and info["supported"]:
        print(f"torch.compile anchors by batch: {'; '.join(skipped)}; --compile-every-batch times all")
    if format_floor(document["results"]):
        print()
        print(format_floor(document["results"]))
    if document.get("first_inference"):
        print(format_ttfi(document["first_inference"]))
    if args.json:
        write_json(document)
        print(f"wrote {args.json}", file=sys.stderr)
    failed = bench.failed_checks(document)
    if failed:
        names = "; ".join(f"{r['config']} @ batch {r['batch']}: {r.get('reason', 'failed')}" for r in failed)
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


def cmd_tune(args) -> int:
    import torch

    from .tune import tune

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32-tf32": torch.float32}[args.dtype]
    torch.backends.cudnn.allow_tf32 = True  # fp32 tunes the TF32 dots, keyed apart from exact fp32
    try:
        count = tune(args.model, _batches(args.batch) or GPU_BATCHES, dtype, args.image_size, args.force)
    except (RuntimeError, ValueError) as err:
        print(f"inception-fast tune: {err}", file=sys.stderr)
        return 2
    print(f"tuning cache: {count} choices")
    return 0
