"""Whole-model speed and accuracy, fused against the anchors, on one device in one process.

Shared by `inception-fast bench` and `benchmarks/`: the same model (a BN-calibrated random
Inception-v4 from `inception_fast.testing`), the same inputs for every configuration, the same
timer (`inception_fast.timing`) and the same accuracy rule (BENCHMARKING.md: the fused model in
dtype D is at most 2x as far from the reference as eager PyTorch in D, plus a small slack).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import costs, timing
from .backends import backend_status, resolve_backend
from .optimize import optimize
from .testing import calibrated_inception_v4, random_images

# dtype name -> (torch dtype, TF32 allowed for the candidates)
DTYPES = {
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
    "fp32": (torch.float32, False),
    "fp32-tf32": (torch.float32, True),
}
# Absolute slack added to 2x the eager error (relative L2 at the logits).
SLACK = {torch.float16: 5e-4, torch.bfloat16: 5e-3, torch.float32: 1e-5, torch.float64: 1e-10}
INPUT_SETS = 3  # inputs rotated between timed calls


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the results."""
    print(f"[inception-fast] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def tf32(enabled: bool):
    """Allow or forbid TF32 in cuDNN convolutions and cuBLAS matmuls inside the block."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 judges the low precisions; float64 judges fp32 (fp32 vs fp32 would be 0 vs 0)."""
    return torch.float64 if dtype == torch.float32 else torch.float32


def accuracy_bound(eager_error: float, dtype: torch.dtype) -> float:
    return 2.0 * eager_error + SLACK.get(dtype, 1e-3)


# ---------------------------------------------------------------------------------------------
# Environment


def git_commit(repo: Path | None = None) -> dict:
    """The commit of the source tree (and whether it has uncommitted changes), if it is a git
    checkout. INCEPTION_FAST_COMMIT, when set, wins: a copied tree may carry a stale .git."""
    if os.environ.get("INCEPTION_FAST_COMMIT"):
        return {"commit": os.environ["INCEPTION_FAST_COMMIT"], "dirty": None}
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            check=False, capture_output=True, text=True, timeout=10,
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                check=False, capture_output=True, text=True, timeout=10,
            )
            return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": "unknown", "dirty": None}


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable"
        return f"not importable ({type(err).__name__})"
    return getattr(module, "__version__", "unknown")


def environment(device: torch.device | str) -> dict:
    """Card, software versions and commit: everything a result needs to be compared."""
    from . import __version__

    device = torch.device(device)
    env = {
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"),
        "timm": _version("timm"),
        "inception_fast": __version__,
        **git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["sm_count"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env


# ---------------------------------------------------------------------------------------------
# Models


def anchor_model(reference: torch.nn.Module, dtype: torch.dtype, device) -> tuple[torch.nn.Module, str]:
    """timm's inception_v4 carrying the reference's weights (same keys), in `dtype` on `device`,
    channels_last on a GPU. Falls back to a copy of the reference when timm is missing."""
    try:
        import timm

        model = timm.create_model("inception_v4", pretrained=False, num_classes=reference.num_classes)
        model.load_state_dict(reference.state_dict(), strict=True)
        name = "timm eager"
    except ImportError:
        model = copy.deepcopy(reference)
        name = "reference eager"
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, name


def supports_cuda_graph_option() -> bool:
    """Whether optimize() offers a whole-model CUDA-graph mode (the triton backend's), with a
    batch limit that can be raised to the batches timed here."""
    parameters = inspect.signature(optimize).parameters
    return "cuda_graph" in parameters and "cuda_graph_max_batch" in parameters


def make_inputs(batch: int, image_size: int, dtype: torch.dtype, device, seed: int, sets: int = INPUT_SETS):
    device = torch.device(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return [
        random_images(batch, image_size, seed=seed + k).to(device=device, dtype=dtype, memory_format=fmt)
        for k in range(sets)
    ]


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class BenchOptions:
    device: str = "cuda"
    dtype: str = "fp16"
    batches: tuple[int, ...] = (1, 32, 256)
    backend: str = "auto"
    image_size: int = 299
    anchors: bool = True
    compile: bool = True
    max_autotune: bool = False
    fused_graph: bool = True
    budget_ms: float | None = None
    seed: int = 0


@dataclass
class Config:
    """One line of the table: how to build it for a batch (returns a callable x -> logits, plus
    an optional CapturedGraph to time by replay), and what it is."""

    name: str
    kind: str  # "fused" or "anchor"
    build: Callable
    backend: str | None = None
    graph: bool = False
    notes: dict = field(default_factory=dict)


def _row(config: Config, batch: int, opts: BenchOptions, **values) -> dict:
    return {
        "suite": "model", "config": config.name, "kind": config.kind, "backend": config.backend,
        "cuda_graph": config.graph, "batch": batch, "dtype": opts.dtype, "image_size": opts.image_size,
        **values,
    }


def _configs(reference, opts: BenchOptions, device: torch.device, dtype, tf32_on: bool) -> list[Config]:
    backend = resolve_backend(opts.backend, device)
    label = f"fused {backend}" + (" (auto)" if opts.backend == "auto" else "")
    configs = []

    def build_fused(cuda_graph: bool = False):
        # Graph every batch size of the run, not only the small ones optimize() graphs by default.
        kwargs = {"cuda_graph": True, "cuda_graph_max_batch": max(opts.batches)} if cuda_graph else {}
        log(f"optimize(backend={backend!r}, dtype={opts.dtype}{', cuda_graph=True' if cuda_graph else ''})")
        return optimize(reference, backend=backend, dtype=dtype, device=device, **kwargs)

    fused = {}

    def fused_eager(batch, example):
        if "model" not in fused:
            fused["model"] = build_fused()
        return fused["model"], None

    configs.append(Config(label, "fused", fused_eager, backend))
    if device.type == "cuda" and opts.fused_graph:
        if supports_cuda_graph_option() and backend == "triton":  # the option is the triton backend's
            def fused_graph(batch, example):
                if "graph_model" not in fused:
                    fused["graph_model"] = build_fused(cuda_graph=True)
                return fused["graph_model"], None

            configs.append(Config(f"{label}, CUDA graph (optimize)", "fused", fused_graph, backend, True))
        else:
            def fused_captured(batch, example):
                model, _ = fused_eager(batch, example)
                return None, timing.CapturedGraph(model, example)

            configs.append(Config(f"{label}, CUDA graph (captured)", "fused", fused_captured, backend, True))

    anchor, anchor_name = anchor_model(reference, dtype, device)
    layout = " channels_last" if device.type == "cuda" else ""
    eager_label = f"{anchor_name} {opts.dtype}{layout}"
    if opts.anchors:
        configs.append(Config(eager_label, "anchor", lambda b, x: (anchor, None)))
        if device.type == "cuda":
            configs.append(Config(
                f"{eager_label}, CUDA graph", "anchor", lambda b, x: (None, timing.CapturedGraph(anchor, x)),
                graph=True,
            ))
            modes = (["default"] if opts.compile else []) + (["max-autotune"] if opts.max_autotune else [])
            for mode in modes:
                def compiled(batch, example, mode=mode):
                    # dynamic=False: one static graph per batch size, as a deployment would use.
                    return torch.compile(anchor, mode=mode, dynamic=False), None

                configs.append(Config(f"torch.compile {mode}, {opts.dtype}{layout}", "anchor", compiled))
    configs.append(Config("__eager__", "eager", lambda b, x: (anchor, None)))  # the accuracy yardstick
    return configs


def run_bench(opts: BenchOptions, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Time and validate every configuration at every batch size; returns the JSON document.
    `checkpoint(document)` is called after each batch size, so a run cut short keeps its rows."""
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu)")
    dtype, tf32_on = DTYPES[opts.dtype]
    ref_dtype = reference_dtype(dtype)
    log(f"building the BN-calibrated random Inception-v4 (seed {opts.seed}) on the CPU")
    reference = calibrated_inception_v4(opts.seed, image_size=opts.image_size)
    judge = copy.deepcopy(reference).to(device=device, dtype=ref_dtype).eval()
    flops_per_image = costs.model_flops(opts.image_size)
    rows = []
    document = {
        "schema": "inception_fast.bench/1",
        "source": "cli",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(device),
        "settings": {**opts.__dict__, "batches": list(opts.batches), "reference_dtype": str(ref_dtype),
                     "flops_per_image": flops_per_image, "timer": "median; L2 flushed; inputs rotated"},
        "results": rows,
    }
    with torch.inference_mode(), tf32(tf32_on):
        configs = _configs(reference, opts, device, dtype, tf32_on)
        for batch in opts.batches:
            inputs = make_inputs(batch, opts.image_size, dtype, device, seed=1000 * opts.seed + batch)
            with tf32(False):
                expected = judge(inputs[0].to(ref_dtype))
            eager_error = None
            batch_rows = []
            for config in configs:
                log(f"batch {batch}: {config.name if config.kind != 'eager' else 'eager accuracy yardstick'}")
                started = time.perf_counter()
                try:
                    model, graph = config.build(batch, inputs[0])
                    out = graph.run(inputs[0]) if graph is not None else model(inputs[0])
                    timing.synchronize(device)
                except Exception as err:
                    if config.kind == "eager":
                        raise
                    log(f"  failed: {type(err).__name__}: {err}")
                    batch_rows.append(_row(config, batch, opts, error=f"{type(err).__name__}: {err}"))
                    continue
                setup_s = time.perf_counter() - started
                error = output_errors(out, expected)
                if config.kind == "eager":
                    eager_error = error["rel_l2"]
                    continue
                budget = opts.budget_ms
                if graph is not None:
                    measured = timing.time_graph(graph, inputs, budget_ms=budget or 1000.0)
                    del graph
                else:
                    measured = timing.time_callable(model, inputs, budget_ms=budget)
                median_s = measured.median_ms / 1e3
                batch_rows.append(_row(
                    config, batch, opts, **measured.as_dict(), setup_s=round(setup_s, 3),
                    images_per_s=batch / median_s, tflops=flops_per_image * batch / median_s / 1e12,
                    **error,
                ))
            for row in batch_rows:
                _judge(row, eager_error, dtype, ref_dtype)
            rows += batch_rows
            _speedups(rows)
            if checkpoint is not None:
                checkpoint(document)
    return document


def output_errors(out: torch.Tensor, expected: torch.Tensor) -> dict:
    from .testing import relative_l2

    diff = (out.double() - expected.double()).abs()
    max_abs = diff.max().item() if torch.isfinite(diff).all() else float("inf")
    return {"rel_l2": relative_l2(out, expected), "max_abs": max_abs}


def _judge(row: dict, eager_error: float | None, dtype: torch.dtype, ref_dtype: torch.dtype) -> None:
    row["eager_rel_l2"] = eager_error
    row["reference_dtype"] = str(ref_dtype).replace("torch.", "")
    if "rel_l2" not in row or eager_error is None:
        row["check"] = "fail" if row["kind"] == "fused" else "-"
        return
    row["bound"] = accuracy_bound(eager_error, dtype)
    passed = row["rel_l2"] <= row["bound"]  # NaN and inf compare False
    # Only the fused rows are ours to pass or fail; anchors get the same verdict for information.
    row["check"] = "pass" if passed else "fail"


def _speedups(rows: list[dict]) -> None:
    """Each row's speed-up over the eager anchor and over the fastest anchor at its batch."""
    for batch in {r["batch"] for r in rows}:
        timed = [r for r in rows if r["batch"] == batch and "median_ms" in r]
        anchors = [r for r in timed if r["kind"] == "anchor"]
        eager = next((r for r in anchors if not r["cuda_graph"] and "compile" not in r["config"]), None)
        best = min(anchors, key=lambda r: r["median_ms"], default=None)
        for r in timed:
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
            r["speedup_vs_best_anchor"] = best["median_ms"] / r["median_ms"] if best else None
            r["best_anchor"] = best["config"] if best else None


def failed_checks(document: dict) -> list[dict]:
    return [r for r in document["results"] if r["kind"] == "fused" and r.get("check") != "pass"]


def usable_backends(device) -> dict[str, tuple[bool, str]]:
    from .backends import BACKENDS

    return {name: backend_status(name, device) for name in BACKENDS}
