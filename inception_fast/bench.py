"""Whole-model speed and accuracy, fused against the anchors, on one device in one process.

Shared by `inception-fast bench` and `benchmarks/`: the same model (a network of
`inception_fast.bench_models` with random weights and calibrated BatchNorm), the same inputs for
every configuration, the same timer (`inception_fast.timing`) and the same accuracy rule
(BENCHMARKING.md: a fused model in dtype D is at most 2x as far from the reference as eager
PyTorch in D, plus a small slack; a non-finite error never passes).

Configurations, each with a stable id (the pytest ids; `config_id` in the JSON):
- fused-default: `optimize(model, dtype=...)`, called exactly as a user would;
- fused-<backend>: `optimize(model, backend=..., dtype=..., device=...)`;
- fused-<backend>-graph: the same with `cuda_graph=True` (the best mode at small batches);
- the anchors of `inception_fast.anchors` (eager, CUDA graph, torch.compile with and without
  freezing), and `floor`: every conv alone in cuDNN (`inception_fast.conv_floor`).
The fused model is whatever `optimize()` returns for the source network; where this version
of optimize() does not accept the network (TypeError / NotImplementedError) the model is
reported as "not supported by this version", with optimize()'s own reason, and nothing fused
is timed.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import anchors as anchor_kinds
from . import bench_models, conv_floor, layer_census, timing
from .backends import BACKENDS, backend_status, resolve_backend
from .optimize import optimize
from .testing import random_images

SCHEMA = "inception_fast.bench/2"
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
FUSED_BACKENDS = ("torch", "triton", "cuda", "auto")
FUSED_IDS = ("fused-default", *(f"fused-{b}" for b in FUSED_BACKENDS),
             *(f"fused-{b}-graph" for b in FUSED_BACKENDS if b != "torch"))
OTHER_BACKENDS = tuple(b for b in BACKENDS if b not in FUSED_BACKENDS)  # the experiments, triton-gemm
EXPERIMENTAL_IDS = (*(f"fused-{b}" for b in OTHER_BACKENDS),  # rows only where --backend names them
                    *(f"fused-{b}-graph" for b in OTHER_BACKENDS))
ANCHOR_IDS = ("eager", "eager-graph", "eager-nchw", *anchor_kinds.COMPILE_ANCHORS)
FLOOR_ID = "floor"
CONFIG_IDS = (*FUSED_IDS, *EXPERIMENTAL_IDS, *ANCHOR_IDS, FLOOR_ID)
# optimize() says "not this network" with these; anything else it raises is a failure.
UNSUPPORTED_ERRORS = (TypeError, NotImplementedError)


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


def verdict(rel_l2: float | None, eager_error: float | None, dtype: torch.dtype) -> dict:
    """The accuracy rule: within 2x eager's error plus slack. A non-finite error never passes:
    not the candidate's (a NaN or inf in its output), and not eager's either, since then there
    is no bound to be within (inf <= inf would pass anything)."""
    if rel_l2 is None or not math.isfinite(rel_l2):
        return {"bound": None, "check": "fail", "reason": "non-finite output (NaN or inf) or no output"}
    if eager_error is None or not math.isfinite(eager_error):
        return {"bound": None, "check": "fail",
                "reason": "eager PyTorch's own output is not finite in this dtype: no bound to judge against"}
    bound = accuracy_bound(eager_error, dtype)
    if rel_l2 <= bound:
        return {"bound": bound, "check": "pass"}
    return {"bound": bound, "check": "fail", "reason": "relative L2 above 2 x eager + slack"}


def output_tensor(out) -> torch.Tensor:
    """The network's output as one [N, features] tensor: logits as they are, pytorch-fid's
    list of [N, 2048, 1, 1] feature maps flattened and joined."""
    if isinstance(out, torch.Tensor):
        return out.flatten(1)
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return torch.cat([o.flatten(1) for o in out], dim=1)
    raise TypeError(
        f"cannot compare an output of type {type(out).__name__}; expected a tensor or a list of tensors"
    )


def output_errors(out, expected) -> dict:
    from .testing import relative_l2

    out, expected = output_tensor(out), output_tensor(expected)
    diff = (out.double() - expected.double()).abs()
    max_abs = diff.max().item() if torch.isfinite(diff).all() else float("inf")
    return {"rel_l2": relative_l2(out, expected), "max_abs": max_abs}


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
        "torchvision": _version("torchvision"),
        "pytorch_fid": _version("pytorch_fid"),
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
# Inputs and the anchors' source


def anchor_model(reference: torch.nn.Module, dtype: torch.dtype, device) -> tuple[torch.nn.Module, str]:
    """timm's inception_v4 carrying the reference Inception-v4's weights (same keys), in `dtype`
    on `device`, channels_last on a GPU (for time to first inference). Falls back to a copy of
    the reference when timm is missing."""
    try:
        import timm

        model = timm.create_model("inception_v4", pretrained=False, num_classes=reference.num_classes)
        model.load_state_dict(reference.state_dict(), strict=True)
        name = "timm eager"
    except ImportError:
        model = copy.deepcopy(reference)
        name = "reference eager"
    return _placed(model, dtype, device), name


def _placed(model: torch.nn.Module, dtype: torch.dtype, device) -> torch.nn.Module:
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def supports_cuda_graph_option() -> bool:
    """Whether optimize() offers a whole-model CUDA-graph mode with a batch limit that can be
    raised to the batches timed here."""
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
# Options and configurations


@dataclass
class BenchOptions:
    model: str = "inception_v4"
    device: str = "cuda"
    dtype: str = "fp16"
    batches: tuple[int, ...] = (1, 32, 256)
    backend: str = "auto"
    image_size: int | None = None  # None: the model's own input size
    anchors: bool = True
    compile: bool = True
    compile_anchors: tuple[str, ...] = anchor_kinds.DEFAULT_COMPILE_ANCHORS
    max_autotune: bool = False
    compile_every_batch: bool = False
    fused_graph: bool = True
    floor: bool = True
    anchors_if_unsupported: bool = False
    budget_ms: float | None = None
    floor_budget_ms: float = 50.0
    seed: int = 0

    def selected_compile_anchors(self) -> tuple[str, ...]:
        if not (self.anchors and self.compile):
            return ()
        extra = tuple(n for n, a in anchor_kinds.COMPILE_ANCHORS.items() if a.option == "--max-autotune")
        chosen = self.compile_anchors + (extra if self.max_autotune else ())
        return tuple(dict.fromkeys(chosen))


@dataclass
class Config:
    """One line of the table: `build(batch, example)` returns a callable x -> output, or a
    CapturedGraph to time by replay."""

    id: str
    name: str
    kind: str  # "fused", "anchor" or "floor"
    build: Callable
    backend: str | None = None
    graph: bool = False
    notes: dict = field(default_factory=dict)


def try_optimize(model: torch.nn.Module, **kwargs) -> tuple[object, str | None]:
    """`optimize(model, **kwargs)`: (the fused model, None), or (None, why) when this version
    does not accept the network, or (the exception, None) when it failed otherwise (a failure
    of the fused model, reported as such)."""
    try:
        return optimize(model, **kwargs), None
    except UNSUPPORTED_ERRORS as err:
        return None, f"not supported by this version: optimize() raised {type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - reported as the fused default's failure
        return err, None


def model_table() -> list[dict]:
    """The table of bench_models, each row with its counted GFLOP per image and whether this
    version's optimize() accepts the network (tried on the CPU, torch backend, random weights)."""
    rows = []
    for name, spec in bench_models.MODELS.items():
        try:
            model = spec.build().eval()
        except ImportError:
            rows.append(bench_models.describe(name))  # says which package is missing
            continue
        row = bench_models.describe(name, model)
        fused, why = try_optimize(model, backend="torch", device="cpu")
        row["optimize"] = why or ("accepted" if isinstance(fused, torch.nn.Module) else
                                  f"failed: {type(fused).__name__}: {fused}")
        rows.append(row)
    return rows


class ModelBench:
    """One network of the table on one device in one dtype: the source model (random weights,
    calibrated BatchNorm), the judge (the same in the reference dtype), the anchors' copy, the
    fused models (built once, on first use) and the floor's layer census."""

    def __init__(self, opts: BenchOptions, device=None):
        self.opts = opts
        self.spec = bench_models.get(opts.model)
        self.device = torch.device(device or opts.device)
        self.on_gpu = self.device.type == "cuda"
        self.dtype_name = opts.dtype
        self.dtype, self.tf32_on = DTYPES[opts.dtype]
        self.ref_dtype = reference_dtype(self.dtype)
        self.image_size = opts.image_size or self.spec.image_size
        log(f"{self.spec.name}: {self.spec.source}, random weights, BatchNorm calibrated at "
            f"{self.image_size}x{self.image_size} (seed {opts.seed})")
        self.source = self._calibrated()
        self.calls = layer_census.census(self.source, self.image_size)
        self.flops_per_image = 2 * layer_census.macs_per_image(self.calls)
        self.conv_flops_per_image = 2 * sum(c.macs for c in self.calls if c.kind == "conv")
        self.judge = copy.deepcopy(self.source).to(device=self.device, dtype=self.ref_dtype).eval()
        self.anchor = _placed(copy.deepcopy(self.source), self.dtype, self.device)
        self.user_model = copy.deepcopy(self.source).to(self.device)  # fp32, as a user hands it over
        self._built: dict = {}
        self.unsupported: str | None = None
        self._probe_fused()

    def _calibrated(self) -> torch.nn.Module:
        try:
            return self.spec.calibrated(self.opts.seed, self.image_size)
        except ImportError as err:
            raise RuntimeError(f"{self.spec.name} needs a package that is not installed: {err}") from None
        except RuntimeError:
            smallest = layer_census.smallest_image_size(self.spec.build(), max(self.spec.image_size, 299))
            if smallest is not None and self.image_size < smallest:
                raise ValueError(
                    f"--image-size {self.image_size} is too small for {self.spec.name}: it needs at least "
                    f"{smallest}x{smallest}"
                ) from None
            raise

    def _probe_fused(self) -> None:
        """optimize() exactly as a user calls it; its TypeError / NotImplementedError means this
        version does not accept the network."""
        log(f"optimize(model, dtype={self.dtype}): the fused default")
        fused, self.unsupported = try_optimize(self.user_model, dtype=self.dtype)
        self._built["fused-default"] = fused
        if self.unsupported:
            log(f"{self.spec.name}: {self.unsupported}")

    # -- which configurations run where ------------------------------------------------------

    def cli_config_ids(self) -> list[str]:
        """What `inception-fast bench` times: the fused default, the chosen backend when one was
        named, its CUDA-graph mode on a GPU, the floor, then the anchors."""
        backend = resolve_backend(self.opts.backend, self.device)
        ids = ["fused-default"]
        if self.opts.backend != "auto":
            ids.append(f"fused-{backend}")
        if self.on_gpu and self.opts.fused_graph and backend != "torch":
            ids.append(f"fused-{backend}-graph")
        ids.append(FLOOR_ID)
        ids += [a for a in ANCHOR_IDS if a in ("eager", "eager-graph", "eager-nchw")]
        ids += list(self.opts.selected_compile_anchors())
        return ids

    def skip_reason(self, config_id: str, batch: int) -> str | None:
        """Why `config_id` is not timed at `batch` here, or None when it is."""
        opts = self.opts
        fused = config_id.startswith("fused-")
        if self.unsupported and (fused or not opts.anchors_if_unsupported):
            return self.unsupported if fused else f"{self.unsupported} (no fused model to time beside)"
        if config_id == FLOOR_ID:
            return None if opts.floor else "--no-floor"
        if config_id in anchor_kinds.GPU_ONLY or config_id.endswith("-graph"):
            if not self.on_gpu:
                return f"{config_id} needs a CUDA GPU"
        if fused:
            backend = config_id.removeprefix("fused-").removesuffix("-graph")
            if backend != "default":
                usable, why = backend_status(backend, self.device)
                if not usable:
                    return f"backend {backend!r} not usable on {self.device}: {why}"
            if config_id.endswith("-graph") and not opts.fused_graph:
                return "--no-fused-graph"
            return None
        if not opts.anchors:
            return "--no-anchors"
        if config_id not in self.spec.anchors:
            return f"{config_id} does not apply to {self.spec.name}"
        if config_id in anchor_kinds.COMPILE_ANCHORS:
            anchor = anchor_kinds.COMPILE_ANCHORS[config_id]
            if not opts.compile:
                return "--no-compile"
            if config_id not in opts.selected_compile_anchors():
                return f"compiles for minutes per shape: add {anchor.option}" if anchor.option else \
                    "not among --compile-anchors"
            if not opts.compile_every_batch and not anchor.runs_at(batch):
                return (f"{anchor.label} runs at {anchor.batch_rule()} (where it is the anchor to beat; "
                        f"--compile-every-batch times it at every batch)")
        return None

    # -- building ------------------------------------------------------------------------------

    def config(self, config_id: str) -> Config:
        if config_id not in CONFIG_IDS:
            raise ValueError(f"unknown configuration {config_id!r}; choose one of {', '.join(CONFIG_IDS)}")
        if config_id == FLOOR_ID:
            return Config(FLOOR_ID, conv_floor.floor_label(self.device), "floor", lambda b, x: (None, None))
        if config_id.startswith("fused-"):
            return self._fused_config(config_id)
        name = anchor_kinds.label(config_id, self.spec.library, self.dtype_name, self.on_gpu)
        if config_id == "eager":
            return Config(config_id, name, "anchor", lambda b, x: (self.anchor, None))
        if config_id == "eager-graph":
            def captured(batch, example):
                return None, timing.CapturedGraph(self.anchor, example)

            return Config(config_id, name, "anchor", captured, graph=True)
        if config_id == "eager-nchw":
            def nchw(batch, example):
                model = self._cached("eager-nchw", lambda: copy.deepcopy(self.source).to(
                    device=self.device, dtype=self.dtype).eval())
                return (lambda x: model(x.contiguous())), None

            return Config(config_id, name, "anchor", nchw, notes={"layout": "NCHW (input made contiguous)"})
        anchor = anchor_kinds.COMPILE_ANCHORS[config_id]

        def compile_build(batch, example):
            log(f"  compiling ({anchor.label}; about 40 s, max-autotune minutes)")
            return anchor_kinds.compiled(self.anchor, anchor), None

        return Config(config_id, name, "anchor", compile_build, graph=anchor.graphed,
                      notes={"compile_mode": anchor.mode, "freezing": anchor.freezing})

    def _once(self, key: str, build: Callable | None) -> Callable:
        """A Config.build that makes the model on first use and keeps it for every batch."""
        return lambda batch, example: (self._cached(key, build), None)

    def _cached(self, key: str, build: Callable | None):
        if key not in self._built:
            self._built[key] = build()
        value = self._built[key]
        if isinstance(value, Exception):
            raise value
        return value

    def _fused_config(self, config_id: str) -> Config:
        if config_id == "fused-default":
            return Config(config_id, "fused default", "fused", self._once(config_id, None),
                          notes={"call": f"optimize(model, dtype={self.dtype})"})
        backend = config_id.removeprefix("fused-").removesuffix("-graph")
        call = f"optimize(model, backend={backend!r}, dtype={self.dtype}"

        def plain():
            log(f"{call}, device={self.device})")
            return optimize(self.user_model, backend=backend, dtype=self.dtype, device=self.device)

        if not config_id.endswith("-graph"):
            return Config(config_id, f"fused {backend}", "fused", self._once(config_id, plain), backend,
                          notes={"call": call + ")"})
        if not supports_cuda_graph_option():
            def captured(batch, example):
                return None, timing.CapturedGraph(self._cached(f"fused-{backend}", plain), example)

            name = f"fused {backend}, CUDA graph (captured)"
            return Config(config_id, name, "fused", captured, backend, graph=True)
        # Graph every batch size of the run, not only the small ones optimize() graphs by default.
        limit = max(self.opts.batches)

        def graphed():
            log(f"{call}, cuda_graph=True, cuda_graph_max_batch={limit})")
            return optimize(self.user_model, backend=backend, dtype=self.dtype, device=self.device,
                            cuda_graph=True, cuda_graph_max_batch=limit)

        return Config(config_id, f"fused {backend}, CUDA graph", "fused",
                      self._once(config_id, graphed), backend, graph=True,
                      notes={"call": f"{call}, cuda_graph=True)"})

    # -- measuring -----------------------------------------------------------------------------

    def inputs(self, batch: int) -> list[torch.Tensor]:
        seed = 1000 * self.opts.seed + batch
        return make_inputs(batch, self.image_size, self.dtype, self.device, seed=seed)

    @torch.inference_mode()
    def expected(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The reference output of the first input set, and eager PyTorch's error in the run
        dtype: the yardstick of the 2x rule."""
        with tf32(False):
            expected = output_tensor(self.judge(inputs[0].to(self.ref_dtype)))
        with tf32(self.tf32_on):
            eager_error = output_errors(self.anchor(inputs[0]), expected)["rel_l2"]
        return expected, eager_error

    def row(self, config: Config, batch: int, **values) -> dict:
        return {
            "suite": "model", "model": self.spec.name, "config": config.name, "config_id": config.id,
            "kind": config.kind, "backend": config.backend, "cuda_graph": config.graph, "batch": batch,
            "dtype": self.dtype_name, "image_size": self.image_size,
            "layout": "channels_last" if self.on_gpu else "contiguous", **config.notes, **values,
        }

    def prepare(self, config: Config, batch: int, example: torch.Tensor):
        """Build `config` for `batch` and run it once: (callable, graph, first output, seconds)."""
        started = time.perf_counter()
        model, graph = config.build(batch, example)
        out = graph.run(example) if graph is not None else model(example)
        timing.synchronize(self.device)
        return model, graph, out, time.perf_counter() - started

    def call_memory_mb(self, model, graph, example: torch.Tensor) -> float | None:
        """GPU memory one call holds at its peak above what was allocated before it (activations,
        workspaces, its output), in MiB: the caching allocator's peak over one untimed call.
        None on the CPU, and for a call that replays a CUDA graph (the graphed configurations, and
        the fused default where FusedNetwork.replays_a_graph): its memory was reserved in the
        graph's pool when it was captured, which a replay's peak does not show."""
        replays = getattr(model, "replays_a_graph", None)  # a fused model's own rule
        if not self.on_gpu or graph is not None or (replays is not None and replays(example)):
            return None
        timing.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        out = model(example)
        timing.synchronize(self.device)
        del out
        return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20

    def measure(self, config_id: str, batch: int, inputs: list[torch.Tensor], expected: torch.Tensor,
                eager_error: float) -> list[dict]:
        """Time and judge one configuration at one batch size: its row (for the floor, its total
        row and one row per block). A configuration that fails to build or run gives a row
        with its error instead."""
        config = self.config(config_id)
        try:
            if config.kind == "floor":
                return self.floor_rows(config, batch)
            model, graph, out, setup_s = self.prepare(config, batch, inputs[0])
            errors = output_errors(out, expected)
            del out
            peak_mb = self.call_memory_mb(model, graph, inputs[0])
            if graph is not None:
                measured = timing.time_graph(graph, inputs, budget_ms=self.opts.budget_ms or 1000.0)
            else:
                measured = timing.time_callable(model, inputs, budget_ms=self.opts.budget_ms)
        except Exception as err:  # noqa: BLE001 - one configuration failing is a result, not a crash
            log(f"  failed: {type(err).__name__}: {err}")
            row = self.row(config, batch, error=f"{type(err).__name__}: {err}")
            row.update(judged(row, eager_error, self.dtype, self.ref_dtype))
            return [row]
        median_s = measured.median_ms / 1e3
        row = self.row(config, batch, **measured.as_dict(), setup_s=round(setup_s, 3),
                       images_per_s=batch / median_s, tflops=self.flops_per_image * batch / median_s / 1e12,
                       peak_mb=peak_mb, **errors)
        row.update(judged(row, eager_error, self.dtype, self.ref_dtype))
        return [row]

    def floor(self, batch: int) -> conv_floor.ConvFloor:
        fused = self._built.get("fused-default")
        fused = fused if isinstance(fused, torch.nn.Module) else None
        labels = conv_floor.block_labels(self.source, fused, [p for p, _ in layer_census.blocks(self.source)])
        with tf32(self.tf32_on):
            return conv_floor.conv_floor(self.calls, batch, self.dtype, self.device, labels=labels,
                                         budget_ms=self.opts.floor_budget_ms, dtype_name=self.dtype_name)

    def floor_rows(self, config: Config, batch: int) -> list[dict]:
        """The total ("cuDNN convs alone", a line of the model table) and one row per block."""
        floor = self.floor(batch)
        median_s = floor.total_ms / 1e3
        total = self.row(
            config, batch, median_ms=floor.total_ms, method="sum of per-conv medians (CUDA events or "
            "perf_counter)", images_per_s=batch / median_s, conv_gflop_per_image=floor.macs * 2 / 1e9,
            tflops=floor.macs * 2 * batch / median_s / 1e12, convs=sum(b.convs for b in floor.blocks),
            distinct_shapes=len(floor.shapes), shapes=floor.shapes,
        )
        blocks = [
            {"suite": "conv-floor", "model": self.spec.name, "config": config.name, "batch": batch,
             "dtype": self.dtype_name, "image_size": self.image_size, "block": b.block, "label": b.label,
             "convs": b.convs, "gflop_per_image": b.macs * 2 / 1e9, "median_ms": b.ms,
             "tflops": b.macs * 2 * batch / (b.ms / 1e3) / 1e12 if b.ms > 0 else None}
            for b in floor.blocks
        ]
        return [total, *blocks]

    def unsupported_row(self) -> dict:
        return {"suite": "model", "model": self.spec.name, "config": "fused default",
                "config_id": "fused-default", "kind": "fused", "status": "not supported",
                "error": self.unsupported, "dtype": self.dtype_name, "image_size": self.image_size,
                "batch": None, "cuda_graph": False}

    def describe(self) -> dict:
        return {"name": self.spec.name, "source": self.spec.source, "library": self.spec.library,
                "image_size": self.image_size, "gflops_per_image": self.flops_per_image / 1e9,
                "conv_gflops_per_image": self.conv_flops_per_image / 1e9, "anchors": list(self.spec.anchors),
                "supported": self.unsupported is None, "unsupported_reason": self.unsupported,
                "note": self.spec.note}


def judged(row: dict, eager_error: float | None, dtype: torch.dtype, ref_dtype: torch.dtype) -> dict:
    """The accuracy fields of a row. Only the fused rows are ours to pass or fail; anchors get
    the same verdict for information."""
    result = {"eager_rel_l2": eager_error, "reference_dtype": str(ref_dtype).replace("torch.", "")}
    if "error" in row:
        return {**result, "check": "fail" if row["kind"] == "fused" else "-", "reason": row["error"]}
    return {**result, **verdict(row.get("rel_l2"), eager_error, dtype)}


# ---------------------------------------------------------------------------------------------
# The run


def run_bench(opts: BenchOptions, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Time and validate every configuration at every batch size; returns the JSON document.
    `checkpoint(document)` is called after each batch size, so a run cut short keeps its rows."""
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu)")
    bench = ModelBench(opts, device)
    rows: list[dict] = []
    document = {
        "schema": SCHEMA,
        "source": "cli",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": bench.spec.name,
        "environment": environment(device),
        "settings": {**opts.__dict__, "batches": list(opts.batches), "image_size": bench.image_size,
                     "reference_dtype": str(bench.ref_dtype), "flops_per_image": bench.flops_per_image,
                     "compile_anchors": list(opts.selected_compile_anchors()),
                     "compile_batch_rules": {n: anchor_kinds.COMPILE_ANCHORS[n].batch_rule()
                                             for n in opts.selected_compile_anchors()},
                     "timer": "median; L2 flushed; inputs rotated"},
        "model_info": bench.describe(),
        "results": rows,
    }
    if bench.unsupported:
        rows.append(bench.unsupported_row())
        if not opts.anchors_if_unsupported:
            return document
    ids = bench.cli_config_ids()
    told = set()  # each skip is said once, not once per batch
    with torch.inference_mode(), tf32(bench.tf32_on):
        for batch in opts.batches:
            inputs = bench.inputs(batch)
            expected, eager_error = bench.expected(inputs)
            for config_id in ids:
                reason = bench.skip_reason(config_id, batch)
                if reason is not None:
                    if reason not in told:
                        log(f"batch {batch}: {config_id} skipped: {reason}")
                        told.add(reason)
                    continue
                log(f"batch {batch}: {bench.config(config_id).name}")
                rows += bench.measure(config_id, batch, inputs, expected, eager_error)
                if config_id in anchor_kinds.COMPILE_ANCHORS:
                    torch._dynamo.reset()  # frees the compiled graphs and their frozen weights
            del inputs, expected
            speedups(rows)
            if checkpoint is not None:
                checkpoint(document)
    return document


def speedups(rows: list[dict]) -> None:
    """Each model row's speed-up over the eager anchor and over the anchor, the fastest anchor
    at its batch (the floor is not an anchor: it is not a way to run the network)."""
    model_rows = [r for r in rows if r.get("suite") == "model" and "median_ms" in r]
    for batch in {r["batch"] for r in model_rows}:
        timed = [r for r in model_rows if r["batch"] == batch]
        anchor_rows = [r for r in timed if r["kind"] == "anchor"]
        eager = next((r for r in anchor_rows if r.get("config_id") == "eager"), None)
        best = min(anchor_rows, key=lambda r: r["median_ms"], default=None)
        for r in timed:
            if r["kind"] == "floor":
                continue
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
            r["speedup_vs_best_anchor"] = best["median_ms"] / r["median_ms"] if best else None
            r["best_anchor"] = best["config"] if best else None


def failed_checks(document: dict) -> list[dict]:
    """Fused rows that failed (accuracy, a non-finite output, an error); a network this version
    does not support is a skip, not a failure."""
    return [r for r in document["results"]
            if r.get("kind") == "fused" and r.get("status") != "not supported" and r.get("check") != "pass"]


def usable_backends(device) -> dict[str, tuple[bool, str]]:
    from .backends import BACKENDS

    return {name: backend_status(name, device) for name in BACKENDS}
